"""Soak harness: days of simulated operation under faults, watchkeeper against naive policies.

    python -m tests.soak [--channels 1000] [--modules 2] [--accounts 1] [--days 7] [--ttl 23h]
                         [--profile default|none] [--seed 1] [--reconcile-every 30m]
                         [--account-reconcile 20h]
                         [--baselines fixed,zoho-advice] [--json] [--workdir DIR]

Run from the repository root. The real engine, store and client run against the emulator over
loopback HTTP, both on one simulated clock (harness.py); the faults of the profile (profile.py)
hit watchkeeper and the two naive policies (baselines.py) at the same instants; report.py measures
everything from the emulator's call log and live intervals and checks the daemon's gap ledger
against them. The exit status is 1 when a channel lapsed without an outage to explain it or the
ledger disagrees with the truth; the cost targets are reported, not enforced.
"""
