"""The HTTP edge to Zoho: OAuth, the actions/watch client, regions and error classes."""
