#!/usr/bin/env python3
"""Real-client compatibility test with the PyPI `etcd3` package (0.12, python-etcd3).

Run with the venv from scripts/install-test-deps.sh (KEEL_TEST_VENV, default /opt/keel-test-venv):
    ENDPOINTS=127.0.0.1:2379,127.0.0.1:22379 /opt/keel-test-venv/bin/python tests/etcd/etcd3_test.py
Only the first host:port of ENDPOINTS is used (python-etcd3 talks to one endpoint), so pointing
ENDPOINTS at a single follower tests forwarding.

Proven against real etcd 3.4 by tests/etcd/selfcheck.sh. Every wait is bounded. Prints `ok - ...`
per passed check; the first failed assert ends the run with a non-zero exit.
"""
import os
import queue
import sys
import threading
import time
import uuid

# etcd3 0.12 ships protobuf modules generated for protobuf 3; the installer pins protobuf<4, and
# this makes a stray protobuf 4+ still load (slower, pure-Python).
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

try:
    import etcd3
except ImportError:
    print("SKIPPED - python package etcd3 not installed (run scripts/install-test-deps.sh)")
    sys.exit(0)

TIMEOUT = 10  # seconds, per RPC and per wait: the machine is slow and shared

PASSED = []


def ok(what):
    PASSED.append(what)
    print("ok - " + what, flush=True)


def main():
    endpoints = os.environ.get("ENDPOINTS")
    if not endpoints:
        sys.exit("set ENDPOINTS=host:port[,host:port...]")
    host, port = endpoints.split(",")[0].strip().rsplit(":", 1)
    c = etcd3.client(host=host, port=int(port), timeout=TIMEOUT)
    p = "keel-py-%d-%s/" % (int(time.time()), uuid.uuid4().hex[:8])
    print("# python-etcd3 %s against %s:%s prefix=%s" % (etcd3.__version__, host, port, p))

    # ------------------------------------------------------------ get / put / delete
    v, meta = c.get(p + "missing")
    assert v is None and meta is None, "get of a missing key: expected (None, None), got %r" % ((v, meta),)
    ok("get of a missing key returns None")

    c.put(p + "a", "1")
    v, meta = c.get(p + "a")
    assert v == b"1", "get after put: expected b'1', got %r" % v
    assert meta.key == (p + "a").encode() and meta.version == 1, "metadata: %r" % meta.__dict__
    assert meta.create_revision == meta.mod_revision > 0, "create == mod revision for a new key: %r" % meta.__dict__
    ok("put/get with metadata")
    first_rev = meta.mod_revision

    resp = c.put(p + "a", "2", prev_kv=True)
    assert resp.prev_kv.value == b"1", "put prev_kv: expected b'1', got %r" % resp.prev_kv.value
    assert resp.header.revision > first_rev, "put header revision did not advance: %r" % resp.header
    ok("put prev_kv and header revision")

    for k, val in (("b", "x"), ("c", "y"), ("sub/1", "s1"), ("sub/2", "s2")):
        c.put(p + k, val)
    got = [(m.key.decode(), val) for val, m in c.get_prefix(p)]
    want = [(p + "a", b"2"), (p + "b", b"x"), (p + "c", b"y"), (p + "sub/1", b"s1"), (p + "sub/2", b"s2")]
    assert got == want, "get_prefix: expected %r, got %r" % (want, got)
    ok("get_prefix returns keys in key order")

    got = [m.key.decode() for _, m in c.get_prefix(p, sort_order="descend", sort_target="key")]
    assert got == [k for k, _ in reversed(want)], "get_prefix descend: got %r" % got
    ok("get_prefix sort_order=descend")

    got = [m.key.decode() for _, m in c.get_range(p + "b", p + "sub/")]
    assert got == [p + "b", p + "c"], "get_range [b, sub/): got %r" % got
    ok("get_range")

    assert c.delete(p + "b") is True, "delete of an existing key should return True"
    assert c.delete(p + "b") is False, "delete of a missing key should return False"
    assert c.get(p + "b")[0] is None, "key still there after delete"
    ok("delete (existing, then missing)")

    dr = c.delete(p + "c", prev_kv=True, return_response=True)
    assert dr.deleted == 1 and dr.prev_kvs[0].value == b"y", "delete prev_kv: %r" % dr
    ok("delete with prev_kv")

    dr = c.delete_prefix(p + "sub/")
    assert dr.deleted == 2, "delete_prefix deleted %d, expected 2" % dr.deleted
    assert list(c.get_prefix(p + "sub/")) == [], "keys left after delete_prefix"
    ok("delete_prefix")

    # ------------------------------------------------------------ transactions
    tk = p + "txn"
    c.put(tk, "one")
    c.put(tk, "two")
    _, m = c.get(tk)
    t = c.transactions
    succeeded, responses = c.transaction(
        compare=[t.value(tk) == "two", t.version(tk) == 2, t.create(tk) == m.create_revision,
                 t.mod(tk) == m.mod_revision],
        success=[t.put(p + "txn-then", "yes"), t.get(tk)],
        failure=[t.put(p + "txn-else", "no")])
    assert succeeded is True, "txn with value/version/create/mod all true should succeed"
    assert responses[1][0][0] == b"two", "txn success get: %r" % responses
    assert c.get(p + "txn-then")[0] == b"yes" and c.get(p + "txn-else")[0] is None, "success branch not applied"
    ok("transaction: value/version/create/mod compares, success branch")

    succeeded, responses = c.transaction(
        compare=[t.value(tk) == "two", t.mod(tk) > m.mod_revision],
        success=[t.put(p + "txn-then", "again")],
        failure=[t.put(p + "txn-else", "no"), t.get(p + "txn-then")])
    assert succeeded is False, "txn with a false mod compare should fail"
    assert responses[1][0][0] == b"yes", "txn failure get: %r" % responses
    assert c.get(p + "txn-else")[0] == b"no" and c.get(p + "txn-then")[0] == b"yes", "failure branch not applied"
    ok("transaction: false compare, failure branch")

    succeeded, _ = c.transaction(compare=[t.version(p + "txn-new") == 0, t.value(tk) != "one",
                                          t.create(tk) < m.mod_revision],
                                 success=[t.delete(p + "txn-else")], failure=[])
    assert succeeded is True and c.get(p + "txn-else")[0] is None, "txn version==0 / != / < compares"
    ok("transaction: version==0 on a missing key, !=, <, delete op")

    # the client's txn-based helpers
    assert c.put_if_not_exists(p + "pine", "1") is True, "put_if_not_exists on a new key"
    assert c.put_if_not_exists(p + "pine", "2") is False, "put_if_not_exists on an existing key"
    assert c.replace(p + "pine", "1", "3") is True and c.replace(p + "pine", "1", "4") is False, "replace"
    assert c.get(p + "pine")[0] == b"3", "value after put_if_not_exists/replace"
    ok("put_if_not_exists and replace")

    # ------------------------------------------------------------ watch
    wk = p + "watch"
    events = queue.Queue()
    # add_watch_callback returns only after the server's "created" reply, so every later write
    # must reach the callback (each call gets a WatchResponse holding a batch of events)
    watch_id = c.add_watch_callback(wk, events.put)
    start = c.put(wk, "w1").header.revision
    rev2 = c.put(wk, "w2").header.revision
    rev3 = c.delete(wk, return_response=True).header.revision
    got = []
    deadline = time.time() + TIMEOUT
    while len(got) < 3 and time.time() < deadline:
        try:
            resp = events.get(timeout=max(deadline - time.time(), 0.01))
        except queue.Empty:
            break
        assert not isinstance(resp, Exception), "watch callback got an error: %r" % resp
        assert resp.header.revision >= start, "watch response header revision %d < %d" % (resp.header.revision, start)
        got += [(type(ev).__name__, ev.value, ev.mod_revision) for ev in resp.events]
    c.cancel_watch(watch_id)
    want = [("PutEvent", b"w1", start), ("PutEvent", b"w2", rev2), ("DeleteEvent", b"", rev3)]
    assert got == want, "watch callback events: expected %r, got %r" % (want, got)
    ok("watch callback sees put, put, delete with their revisions")

    # iterator with start_revision: must replay exactly, then cancel() ends the iterator
    it, cancel = c.watch(wk, start_revision=start)
    result = []

    def consume():
        for ev in it:
            result.append((type(ev).__name__, ev.value, ev.mod_revision))
            if len(result) == 3:
                break

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    th.join(TIMEOUT)
    cancel()
    assert result == want, "watch iterator from start_revision: expected %r, got %r" % (want, result)
    ok("watch iterator with start_revision replays history")

    wp = p + "wp/"
    rev0 = c.get_prefix_response(wp).header.revision
    it, cancel = c.watch_prefix(wp, start_revision=rev0 + 1, prev_kv=True)
    result = []

    def consume_prefix():
        for ev in it:
            # prev_kv is absent (not empty) for a key's first version
            pv = ev.prev_value if ev._event.HasField("prev_kv") else None
            result.append((type(ev).__name__, ev.key.decode(), ev.value, pv))
            if len(result) == 3:
                break

    th = threading.Thread(target=consume_prefix, daemon=True)
    th.start()
    c.put(wp + "x", "1")
    c.put(wp + "y", "2")
    c.put(wp + "x", "3")
    c.put(p + "wq", "not-in-prefix")
    th.join(TIMEOUT)
    cancel()
    want_p = [("PutEvent", wp + "x", b"1", None), ("PutEvent", wp + "y", b"2", None),
              ("PutEvent", wp + "x", b"3", b"1")]
    got_p = result
    assert got_p == want_p, "watch_prefix prev_kv: expected %r, got %r" % (want_p, got_p)
    ok("watch_prefix with prev_kv")

    try:
        ev = c.watch_once(p + "never", timeout=1)
        raise AssertionError("watch_once on an idle key returned %r" % ev)
    except etcd3.exceptions.WatchTimedOut:
        ok("watch_once times out on an idle key")

    # ------------------------------------------------------------ leases
    lease = c.lease(60)
    assert lease.id > 0 and lease.ttl == 60, "lease grant: id=%r ttl=%r" % (lease.id, lease.ttl)
    c.put(p + "l/a", "1", lease=lease)
    c.put(p + "l/b", "2", lease=lease.id)
    _, m = c.get(p + "l/a")
    assert m.lease_id == lease.id, "key's lease: expected %d, got %d" % (lease.id, m.lease_id)
    ok("lease grant and put with lease")

    r = lease.refresh()
    assert r and r[0].ID == lease.id and r[0].TTL == 60, "refresh: %r" % r
    ok("lease refresh (keep-alive)")

    info = c.get_lease_info(lease.id)
    assert info.ID == lease.id and info.grantedTTL == 60 and 0 < info.TTL <= 60, "time_to_live: %r" % info
    assert sorted(info.keys) == [(p + "l/a").encode(), (p + "l/b").encode()], "time_to_live keys: %r" % info.keys
    assert 0 < lease.remaining_ttl <= 60 and lease.granted_ttl == 60, "remaining/granted ttl"
    ok("lease time_to_live with keys, remaining_ttl, granted_ttl")

    lease.revoke()
    assert list(c.get_prefix(p + "l/")) == [], "keys of a revoked lease still present"
    assert c.get_lease_info(lease.id).TTL == -1, "time_to_live of a revoked lease should be TTL -1"
    ok("lease revoke deletes attached keys; time_to_live then says TTL -1")

    # ------------------------------------------------------------ locks
    name = p.rstrip("/").replace("/", "-") + "-lock"
    first = c.lock(name, ttl=30)
    assert first.acquire(timeout=TIMEOUT) is True, "first lock acquire failed"
    assert first.is_acquired(), "is_acquired false after acquire"
    ok("lock acquire")

    second = c.lock(name, ttl=30)
    assert second.acquire(timeout=1) is False, "second contender got a held lock"
    ok("second contender times out while the lock is held")

    got_it = {}

    def contend():
        t0 = time.time()
        got_it["ok"] = second.acquire(timeout=TIMEOUT)
        got_it["at"] = time.time() - t0

    th = threading.Thread(target=contend, daemon=True)
    th.start()
    time.sleep(1.5)
    assert "ok" not in got_it, "second contender acquired while the first held the lock"
    assert first.release() is True, "release returned False"
    th.join(TIMEOUT + 2)
    assert got_it.get("ok") is True, "second contender did not get the lock after release: %r" % got_it
    assert got_it["at"] >= 1.0, "second contender acquired too early (%.2fs)" % got_it["at"]
    assert second.is_acquired() and not first.is_acquired(), "lock ownership after hand-over"
    second.release()
    with c.lock(name, ttl=30) as third:
        assert third.is_acquired(), "context-manager lock not acquired"
    assert c.get(third.key)[0] is None, "lock key left after context exit"
    ok("second contender acquires after release; context-manager lock")

    # ------------------------------------------------------------ cluster / maintenance
    members = list(c.members)
    assert members, "no members"
    for mb in members:
        assert mb.id and mb.name and mb.peer_urls and mb.client_urls, "incomplete member %r" % mb
    # keel lists client URLs without their scheme (crates/keel-server/src/etcd/cluster.rs says why):
    # compare host:port.
    assert any(u.split("//")[-1] == "%s:%s" % (host, port) for mb in members for u in mb.client_urls), \
        "our endpoint is not among the members' client URLs: %r" % [mb.client_urls for mb in members]
    ok("members list (%d members)" % len(members))

    st = c.status()
    assert st.version.startswith("3."), "status version: %r" % st.version
    assert st.leader is not None and st.leader.id in [mb.id for mb in members], "status leader: %r" % st.leader
    assert st.raft_index > 0 and st.raft_term > 0 and st.db_size > 0, "status numbers: %r" % st.__dict__
    ok("status (version %s, leader %s)" % (st.version, st.leader.name))

    c.delete_prefix(p)
    # no c.close(): python-etcd3 0.12's watch thread dies noisily on a closed channel
    print("# etcd3_test.py: %d passed, 0 failed" % len(PASSED))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAIL - %s" % e)
        print("# etcd3_test.py: %d passed, 1 failed" % len(PASSED))
        sys.exit(1)
    except Exception as e:  # an RPC error or a client incompatibility is a failure too
        import traceback
        traceback.print_exc()
        print("FAIL - unexpected %s: %s" % (type(e).__name__, e))
        print("# etcd3_test.py: %d passed, 1 failed" % len(PASSED))
        sys.exit(1)
