"""Who may do what to which session: one pure function, no I/O.

* ``sessions:admin`` (an admin API key, or an LDAP login in an admin group): every
  action on every session.
* The **owner** (the key or login whose ``key_id`` opened the session): every action
  on it.
* A **tag viewer** (a key or login holding the session's tag): ``get``, ``list`` and
  ``stream`` only - never ``invoke``, ``close`` or ``resume`` (resuming a stream from a
  sequence is an owner's recovery path; a viewer re-attaches live).
* A session with **no tag** is seen by its owner and admins only; a session with **no
  owner** by admins only, whatever its tag.
* ``open``: any API key; an LDAP login only with admin rights (viewers are read-only).
* An action this policy does not know is treated like a write (owner or admin).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sessiongate.core import Identity, Session

__all__ = ["READ_ONLY", "decide", "keeps_alive"]

#: what a tag grants
READ_ONLY = frozenset({"get", "list", "stream"})
TOKEN_KIND = "token"


def decide(identity: Identity, action: str, session: Session | None) -> tuple[bool, str]:
    """``(allowed, why)``; ``why`` names the rule (never a secret or a tag value)."""
    if action == "open":
        if identity.kind == TOKEN_KIND and not identity.is_admin:
            return False, "LDAP logins without admin rights are read-only"
        return True, "any key may open"
    if identity.is_admin:
        return True, "admin"
    if session is None:
        return False, "no session named"
    owner = session.owner_key_id
    if not owner:
        return False, "the session has no owner (admins only)"
    if owner == identity.key_id:
        return True, "owner"
    if action in READ_ONLY and session.tag and session.tag in identity.tags:
        return True, "read-only tag"
    if session.tag and session.tag in identity.tags:
        return False, f"a tag grants read-only access, not {action}"
    return False, "not the owner, no admin scope, no matching tag"


def keeps_alive(identity: Identity, session: Session) -> bool:
    """Owner's and admins' streams keep a session alive; a viewer only watches."""
    return identity.is_admin or (bool(session.owner_key_id)
                                 and identity.key_id == session.owner_key_id)
