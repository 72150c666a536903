"""Fault-injection campaigns against real agents ("prove it under faults").

- `proxy`: a fault-injecting TCP proxy every byte of peer traffic crosses
  (delay, blackhole one direction, reject/reset connections).
- `history`: thread-safe recording of invoke/ok/fail/info per operation, and
  the conversion to `tests.lincheck` operations.
- `campaign`: one run (5 agents in 3 zones, clients, a seeded nemesis, heal,
  check) and a campaign of several runs.
- `python -m tests.faults --minutes N [--seed S]` runs a campaign and prints
  one JSON summary last; `test_faults.py` is the short CI campaign.
"""
