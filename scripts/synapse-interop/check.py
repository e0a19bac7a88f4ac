"""Checks federation between a Synapse and a Cairn, both ways: device-key query and claim,
to-device messages, each side joining a room on the other with messages both ways, and
device-list changes reaching the other side. Standard library only. Prints a transcript; exits non-zero on a failure.

Usage: check.py SYNAPSE_CLIENT_URL SYNAPSE_NAME CAIRN_CLIENT_URL CAIRN_NAME
"""
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid


def call(base, method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def ok(base, method, path, body=None, token=None):
    status, answer = call(base, method, path, body, token)
    if status != 200:
        sys.exit(f"FAIL {method} {base}{path}: {status} {answer}")
    return answer


def register(base, name):
    answer = ok(base, "POST", "/_matrix/client/v3/register", {
        "username": name, "password": "interop-pw", "auth": {"type": "m.login.dummy"}})
    return answer


def device_keys(session, tag):
    user, device = session["user_id"], session["device_id"]
    return {
        "user_id": user, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{device}": f"curve-{tag}", f"ed25519:{device}": f"ed-{tag}"},
        "signatures": {user: {f"ed25519:{device}": f"sig-{tag}"}},
    }


def upload(base, session, tag):
    ok(base, "POST", "/_matrix/client/v3/keys/upload", {
        "device_keys": device_keys(session, tag),
        "one_time_keys": {"signed_curve25519:AAAA": {"key": f"otk-{tag}", "signatures": {}}},
        "fallback_keys": {"signed_curve25519:FFFF": {"key": f"fb-{tag}", "fallback": True,
                                                      "signatures": {}}},
    }, session["access_token"])


def check(label, condition, detail=""):
    print(("ok   " if condition else "FAIL ") + label + (f": {detail}" if not condition else ""))
    if not condition:
        sys.exit(1)


def query_and_claim(label, base, me, them):
    user, device = them["user_id"], them["device_id"]
    answer = ok(base, "POST", "/_matrix/client/v3/keys/query",
                {"device_keys": {user: []}}, me["access_token"])
    got = answer.get("device_keys", {}).get(user, {}).get(device, {})
    check(f"{label}: key query over federation", got.get("keys", {}).get(f"ed25519:{device}")
          is not None and not answer.get("failures"), answer)
    claims = []
    for _ in range(2):
        answer = ok(base, "POST", "/_matrix/client/v3/keys/claim?timeout=10000",
                    {"one_time_keys": {user: {device: "signed_curve25519"}}}, me["access_token"])
        claims.append(answer.get("one_time_keys", {}).get(user, {}).get(device, {}))
    check(f"{label}: claim gets the one-time key", list(claims[0]) == ["signed_curve25519:AAAA"],
          claims[0])
    check(f"{label}: then the fallback key", list(claims[1]) == ["signed_curve25519:FFFF"],
          claims[1])


def to_device(label, sender_base, sender, recv_base, receiver):
    marker = str(uuid.uuid4())
    ok(sender_base, "PUT", f"/_matrix/client/v3/sendToDevice/m.interop/{uuid.uuid4().hex}",
       {"messages": {receiver["user_id"]: {receiver["device_id"]: {"marker": marker}}}},
       sender["access_token"])
    since = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        path = "/_matrix/client/v3/sync?timeout=2000" + (f"&since={since}" if since else "")
        answer = ok(recv_base, "GET", path, token=receiver["access_token"])
        since = answer["next_batch"]
        for event in answer.get("to_device", {}).get("events", []):
            if event.get("content", {}).get("marker") == marker:
                check(f"{label}: to-device delivered", event.get("sender") == sender["user_id"],
                      event)
                return
    check(f"{label}: to-device delivered", False, "not seen within 30 s")


def wait_for_message(label, base, session, room_id, body):
    since = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        path = "/_matrix/client/v3/sync?timeout=2000" + (f"&since={since}" if since else "")
        answer = ok(base, "GET", path, token=session["access_token"])
        since = answer["next_batch"]
        room = answer.get("rooms", {}).get("join", {}).get(room_id, {})
        for event in room.get("timeline", {}).get("events", []):
            if event.get("content", {}).get("body") == body:
                check(label, True)
                return
    check(label, False, "not seen within 30 s")


def rooms(host_name, host, host_user, guest_name, guest, guest_user, host_server_name):
    room_id = ok(host, "POST", "/_matrix/client/v3/createRoom",
                 {"preset": "public_chat", "name": "interop"}, host_user["access_token"])["room_id"]
    print(f"room {room_id} created on {host_name}")
    status, answer = call(guest, "POST",
                          f"/_matrix/client/v3/join/{urllib.parse.quote(room_id)}"
                          f"?server_name={urllib.parse.quote(host_server_name)}", {},
                          guest_user["access_token"])
    check(f"{guest_name} user joins a room on {host_name}", status == 200, answer)
    for base, user in [(host, host_user), (guest, guest_user)]:
        members = ok(base, "GET",
                     f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/joined_members",
                     token=user["access_token"])
        check("both members seen", sorted(members.get("joined", {})) ==
              sorted([host_user["user_id"], guest_user["user_id"]]), members)
    for sender_base, sender, recv_base, receiver, label in [
        (host, host_user, guest, guest_user, f"message {host_name} to {guest_name}"),
        (guest, guest_user, host, host_user, f"message {guest_name} to {host_name}"),
    ]:
        body = f"{label} {uuid.uuid4().hex[:8]}"
        ok(sender_base, "PUT",
           f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/{uuid.uuid4().hex}",
           {"msgtype": "m.text", "body": body}, sender["access_token"])
        wait_for_message(label, recv_base, receiver, room_id, body)


def device_lists(label, owner_base, owner, watch_base, watcher):
    """The owner logs in a new device with keys; the watcher, sharing a room, sees the owner in
    device_lists.changed and the new device in a key query."""
    since = ok(watch_base, "GET", "/_matrix/client/v3/sync?timeout=0",
               token=watcher["access_token"])["next_batch"]
    localpart = owner["user_id"][1:].split(":")[0]
    device = ok(owner_base, "POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
        "password": "interop-pw"})
    upload(owner_base, device, "second")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = ok(watch_base, "GET", f"/_matrix/client/v3/sync?timeout=2000&since={since}",
                    token=watcher["access_token"])
        since = answer["next_batch"]
        if owner["user_id"] in answer.get("device_lists", {}).get("changed", []):
            break
    else:
        check(f"{label}: device-list change seen in sync", False, "not seen within 30 s")
    check(f"{label}: device-list change seen in sync", True)
    answer = ok(watch_base, "POST", "/_matrix/client/v3/keys/query",
                {"device_keys": {owner["user_id"]: []}}, watcher["access_token"])
    devices = answer.get("device_keys", {}).get(owner["user_id"], {})
    check(f"{label}: the new device is queryable", device["device_id"] in devices, answer)


def main():
    synapse, synapse_name, cairn, cairn_name = sys.argv[1:5]
    suffix = uuid.uuid4().hex[:6]
    alice = register(synapse, f"alice{suffix}")
    bob = register(cairn, f"bob{suffix}")
    print(f"alice {alice['user_id']} on Synapse, bob {bob['user_id']} on Cairn")
    upload(synapse, alice, "alice")
    upload(cairn, bob, "bob")
    query_and_claim("Cairn asks Synapse", cairn, bob, alice)
    query_and_claim("Synapse asks Cairn", synapse, alice, bob)
    to_device("Cairn to Synapse", cairn, bob, synapse, alice)
    to_device("Synapse to Cairn", synapse, alice, cairn, bob)
    rooms("Cairn", cairn, bob, "Synapse", synapse, alice, cairn_name)
    rooms("Synapse", synapse, alice, "Cairn", cairn, bob, synapse_name)
    device_lists("Synapse to Cairn", synapse, alice, cairn, bob)
    device_lists("Cairn to Synapse", cairn, bob, synapse, alice)
    print("all interop checks passed")


if __name__ == "__main__":
    main()
