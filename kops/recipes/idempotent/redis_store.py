"""The idempotent helper's shared store on Redis (optional extra: ``pip install kops[redis]``).

Use it when consumers of one group run in several processes or on several machines: every
claim is one Lua script, so it is atomic on the Redis server and needs no client-side locking.

Each message key is one Redis string:

- ``run:<token>:<attempts>:<lease-deadline-ms>`` while in progress;
- ``done`` once processed.

A done key expires after ``ttl``; an in-progress key a day after its lease. The lease deadline
lives inside the value, so an expired lease is still visible, taken over and counted as one
more attempt (a key that had just vanished would lose that history). Lease
deadlines use the Redis server's clock, so consumers on machines with skewed clocks agree.
"""

from __future__ import annotations

from typing import Any

from kops.recipes.idempotent.stores import Claim, ClaimStatus

__all__ = ["RedisStore"]

# An in-progress key outlives its lease by a day, so a crashed claim is still seen as a
# take-over (and its attempts counted) when the message comes back within that time.
_KEEP_MS = 86_400_000

# KEYS[1] = key; ARGV = token, lease ms. Returns {status, attempts, taken_over}.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('GET', KEYS[1])
local attempts = 1
local taken = 0
if v then
  if v == 'done' then return {'done', 0, 0} end
  local _, _, tok, att, deadline = string.find(v, '^run:([^:]*):(%d+):(%d+)$')
  if deadline and tonumber(deadline) > now then return {'busy', 0, 0} end
  if att then attempts = tonumber(att) + 1; taken = 1 end
end
redis.call('SET', KEYS[1], 'run:' .. ARGV[1] .. ':' .. attempts .. ':' .. (now + tonumber(ARGV[2])),
           'PX', tonumber(ARGV[2]) + KEEP_MS)
return {'acquired', attempts, taken}
"""

# KEYS[1] = key; ARGV = token, ttl ms. 1 if our claim became done, 0 if we had lost it.
_COMPLETE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1]) + 5) == 'run:' .. ARGV[1] .. ':' then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] = key; ARGV = token. Expire the lease now but keep the attempt count.
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local _, _, tok, att = string.find(v, '^run:([^:]*):(%d+):%d+$')
if tok ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'run:' .. tok .. ':' .. att .. ':0', 'KEEPTTL')
return 1
"""

# KEYS[1] = key; ARGV = token, lease ms. 1 if renewed, 0 if the claim was lost.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local _, _, tok, att = string.find(v, '^run:([^:]*):(%d+):%d+$')
if tok ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'run:' .. tok .. ':' .. att .. ':' .. (now + tonumber(ARGV[2])),
           'PX', tonumber(ARGV[2]) + KEEP_MS)
return 1
"""

# KEYS[1] = key. 'done', 'in_progress', or false (absent or expired lease).
_STATE = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
if v == 'done' then return 'done' end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local _, _, deadline = string.find(v, ':(%d+)$')
if deadline and tonumber(deadline) > now then return 'in_progress' end
return false
"""


class RedisStore:
    """A :class:`~kops.recipes.idempotent.stores.DedupStore` on Redis.

    ``client`` is a ``redis.Redis`` (or anything with the same ``register_script``), or pass
    ``url`` (``redis://host:6379/0``) and one is made. ``prefix`` namespaces the keys.
    Tokens must not contain ``:``; the helper's tokens are hex.
    """

    def __init__(
        self, client: Any = None, *, url: str | None = None, prefix: str = "kops:idem:"
    ) -> None:
        if client is None:
            if url is None:
                raise ValueError("give a redis client or url=")
            client = _redis_module().Redis.from_url(url)
        self.client = client
        self.prefix = prefix
        self._claim = client.register_script(_CLAIM.replace("KEEP_MS", str(_KEEP_MS)))
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW.replace("KEEP_MS", str(_KEEP_MS)))
        self._state = client.register_script(_STATE)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "kops:idem:") -> RedisStore:
        return cls(url=url, prefix=prefix)

    def _k(self, key: str) -> str:
        return self.prefix + key

    def claim(self, key: str, token: str, lease: float) -> Claim:
        status, attempts, taken = self._claim(keys=[self._k(key)], args=[token, _ms(lease)])
        status = status.decode() if isinstance(status, bytes) else status
        return Claim(ClaimStatus(status), attempts=int(attempts), taken_over=bool(taken))

    def complete(self, key: str, token: str, ttl: float) -> bool:
        return bool(self._complete(keys=[self._k(key)], args=[token, _ms(ttl)]))

    def release(self, key: str, token: str) -> None:
        self._release(keys=[self._k(key)], args=[token])

    def renew(self, key: str, token: str, lease: float) -> bool:
        return bool(self._renew(keys=[self._k(key)], args=[token, _ms(lease)]))

    def state(self, key: str) -> str | None:
        v = self._state(keys=[self._k(key)])
        if not v:
            return None
        return v.decode() if isinstance(v, bytes) else str(v)

    def purge_expired(self) -> int:
        # Redis expires keys itself.
        return 0

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r})"


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError(
            "the Redis store needs the 'redis' package: pip install 'kops[redis]'"
        ) from None
    return redis
