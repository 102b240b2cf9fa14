"""Exercise 4.3 as check-then-act: GET the record, then INCRBY, then SET; two runs both credit."""

from solutions.ch04_distributed import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "4.3"
EXPECT = "check-then-act"


async def apply_payment(redis, payment_id, account, amount, *, ttl_s=86_400):
    if await redis.get(f"applied:{payment_id}"):
        return int(await redis.get(f"balance:{account}") or 0)
    balance = await redis.incrby(f"balance:{account}", amount)
    await redis.set(f"applied:{payment_id}", "1", ex=ttl_s)
    return int(balance)
