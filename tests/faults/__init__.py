"""Fault injection: killed, paused and crashing workers, a killed Redis; checked against a ledger kept outside Redis."""
