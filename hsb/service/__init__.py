"""Services: the application the active host runs for each terminal message.

- `hsb.service.api`: the plug-in interface hsbd loads a service through, and the two
  exceptions that tell the host what to do with a message (`ServiceUnavailable`: keep it
  and retry; anything else: an error reply);
- `hsb.service.builtin`: `echo` and `journal`, stand-ins for an application;
- `hsb.service.db`: one small async interface over PostgreSQL (asyncpg) and SQLite,
  with the errors sorted into "retry the transaction", "the database is unavailable"
  (the message waits) and "a bug" (an error reply);
- `hsb.service.once`: exactly-once effects: the effect and an idempotency record of
  (terminal, message id) with the reply, committed in one transaction;
- `hsb.service.ledger`: the reference service (accounts, deposits, withdrawals,
  transfers, balances) built on the two above.
"""
