"""Exercise 4.3 as INCRBY, then SET NX: a crash after the credit, and the retry credits again."""

from solutions.ch04_distributed import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "4.3"
EXPECT = "credited p1 2 times"


async def apply_payment(redis, payment_id, account, amount, *, ttl_s=86_400):
    if await redis.get(f"applied:{payment_id}"):
        return int(await redis.get(f"balance:{account}") or 0)
    balance = await redis.incrby(f"balance:{account}", amount)
    await redis.set(f"applied:{payment_id}", "1", nx=True, ex=ttl_s)
    return int(balance)
