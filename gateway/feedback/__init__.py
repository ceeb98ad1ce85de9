"""What receivers say back: asynchronous bounces (DSNs and the common
non-standard formats) and complaints (ARF), matched to the message and
recipient they are about, and complaint-rate throttling.

- `tokens.py`: signed VERP addresses and X-Gateway-Id headers.
- `reports.py`: parsing DSNs and ARF reports.
- `sent.py`: what was sent, remembered for matching late reports.
- `processor.py`: an inbound report → matched outcome → hooks, metrics, log.
- `complaints.py`: complaint rates per sender domain and source, and throttling.
"""
