"""Exercise 4.3 as SET NX, then INCRBY: a crash between the two records a credit never made."""

from solutions.ch04_distributed import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "4.3"
EXPECT = "credited p1 0 times"


async def apply_payment(redis, payment_id, account, amount, *, ttl_s=86_400):
    if await redis.set(f"applied:{payment_id}", "1", nx=True, ex=ttl_s):
        return int(await redis.incrby(f"balance:{account}", amount))
    return int(await redis.get(f"balance:{account}") or 0)
