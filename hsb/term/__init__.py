"""The terminal simulator (`hsbterm`): an interactive terminal and a load generator that checks for loss.

Library entry points: `hsb.term.load.run_load` (returns a `LoadReport`),
`hsb.term.client.TerminalClient`, `hsb.term.verdict.judge` / `judge_marks`.
"""
