"""The revisions, oldest first by their numbers; each is frozen once released."""
