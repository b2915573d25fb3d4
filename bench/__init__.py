"""Parcel benchmarks: what mediation costs against a plain relay (issue 6).

Run ``.venv/bin/python -m bench`` (full, about 15 minutes) or ``.venv/bin/python -m bench
--quick`` (under 3 minutes). Everything runs on loopback against a throwaway Synapse.
"""
