"""Helper containers in a node's network namespace on the docker backend: link faults (``tc``) and traffic
capture (``tcpdump``).

The node containers get no extra capability. A short-lived helper container of the node image joins one
node's network namespace (``--network container:<node>``) with ``NET_ADMIN`` and, as root, runs the shell script
:func:`link_script` builds; it is removed when the script ends.

Every effect is one-way and on egress, as in the local backend's proxy (:class:`~testbed.proxy.NetworkModel`):
node ``a`` delays, drops or throttles what it sends to ``b`` with the effect of the ``a``-``b`` link (both
ends' node effects and the link's own, combined), and ``b`` does the same towards ``a``. On each of the node's
interfaces the script installs an ``htb`` qdisc that sends unclassified traffic out unshaped, one htb class per
distinct delay, jitter and bandwidth (rate: the bandwidth limit) with a ``netem`` child for delay ± jitter, and
a ``u32`` filter per peer address sending packets to that peer into its class (htb rather than ``prio`` +
``tbf``: one classful qdisc does both the classes and the shaping). Loss is an nftables rule per peer address
dropping that share of the packets at random (``numgen random``), not netem's ``loss``: it then works on
kernels without netem.

Delay and jitter need the kernel's netem qdisc (``CONFIG_NET_SCH_NETEM``). Some kernels lack it (the
Firecracker VM this project is developed on has neither netem nor prio, but has htb, u32 and nftables): the
backend probes once (:data:`PROBE`) and refuses delay and jitter with
:class:`~testbed.backend.BackendUnsupported` naming the missing option; loss and bandwidth limits still work.

Only packets to another node's address are ever degraded, so the orchestrator's control path is not: its
probes and the scripted users reach the node through the published port on the access network, and the answers
go to the host's bridge gateway, which no filter matches. A node's addresses change when it restarts or moves
between networks (partitions), so the docker backend re-applies the scripts after each of those.

Traffic capture (:func:`start_capture`) is the same kind of helper, long-lived: ``tcpdump -i any`` in the node's
namespace, writing a pcap into a directory of the run's results bind-mounted into it, with a filter leaving
out the access network (the users' connections and the orchestrator's probes): what it records is the
inter-node traffic, which :mod:`testbed.confscan` searches for the run's marker after the teardown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from testbed.proxy import Effect

HELPER_LABEL = "org.socp-testbed.netns-helper"
"""Label (value: the node) of a helper container working in a node's network namespace."""
HELPER_TIMEOUT = 30.0
"""Seconds a helper's script may take."""

MAX_EFFECTS = 64
"""Distinct effects one node applies at once (one htb class each): a bound, far above what scenarios use."""
UNLIMITED_BIT = 10_000_000_000
"""The rate of an htb class whose effect sets no bandwidth: 10 Gbit/s, more than a veth carries here."""
DIRECT_QLEN = 1000
"""Packets htb queues unshaped for traffic no filter matched (a veth may have txqueuelen 0: htb would keep 2)."""
NFT_TABLE = "socp_faults"
"""The nftables table (family ip) holding the loss rules in a node's namespace."""
LOSS_SCALE = 1_000_000
"""Loss is drawn as ``numgen random mod LOSS_SCALE < loss * LOSS_SCALE``: a resolution of one in a million."""

CLEAR = f"""for dev in $(ip -o link show | awk -F': ' '{{print $2}}' | cut -d@ -f1); do
  [ "$dev" = lo ] && continue
  tc qdisc del dev "$dev" root 2>/dev/null || true
done
nft delete table ip {NFT_TABLE} 2>/dev/null || true"""
"""Shell: remove whatever :func:`link_script` installed (the root qdiscs, the loss table; none: nothing to do)."""

PROBE = """tc qdisc add dev lo root netem delay 1ms 2>&1 && tc qdisc del dev lo root"""
"""Shell: succeeds when the kernel has the netem qdisc (tried on the loopback for a moment)."""


def needs_netem(effect: Effect) -> bool:
    """Whether ``effect`` needs the netem qdisc: delay or jitter (loss is nftables', bandwidth htb's)."""
    return bool(effect.delay or effect.jitter)


def netem_arguments(effect: Effect) -> str:
    """``tc qdisc … netem`` arguments for ``effect``'s delay ± jitter: ``delay 100.000ms 20.000ms``."""
    parts = [f"delay {effect.delay * 1000:.3f}ms"]
    if effect.jitter:
        parts.append(f"{effect.jitter * 1000:.3f}ms")
    return " ".join(parts)


def rate_bit(effect: Effect) -> int:
    """The htb rate of ``effect`` in bit/s (:class:`Effect` counts bytes per second; tc's ``bps`` is bytes too,
    ``bit`` is unambiguous)."""
    return max(8, round(effect.bandwidth * 8)) if effect.bandwidth else UNLIMITED_BIT


def loss_match(loss: float) -> str:
    """The nftables match (with a trailing space) that picks ``loss`` of the packets at random; empty for all of
    them (``numgen random mod N`` gives 0 to N-1, so a share of N would be out of range)."""
    if loss >= 1:
        return ""
    return f"numgen random mod {LOSS_SCALE} lt {min(round(loss * LOSS_SCALE), LOSS_SCALE - 1)} "


def link_script(peers: Mapping[str, tuple[Effect, Sequence[str]]]) -> str:
    """The shell script that makes one node's egress to each peer suffer that link's effect.

    ``peers``: peer name → (effect of the link to it, the peer's IPv4 addresses). Idle effects (and peers with
    no address) are left clean. The script first removes what an earlier one installed, so it also restores.

    Delay, jitter and bandwidth are ``tc``: on every interface but the loopback an ``htb`` root qdisc whose
    unclassified traffic goes out unshaped (``default 0``: htb's direct queue), one htb class per distinct
    (delay, jitter, bandwidth) (its rate: the bandwidth limit, or :data:`UNLIMITED_BIT`) with a ``netem`` child
    for delay ± jitter, and a ``u32`` filter per peer address. Loss is an nftables rule per peer address in the
    output hook dropping a random share of the packets (``numgen random``): it needs no netem, which some
    kernels lack.
    """
    bands: dict[Effect, int] = {}
    filters: list[tuple[str, int, str]] = []
    drops: list[tuple[str, str, str]] = []
    for peer in sorted(peers):
        effect, addresses = peers[peer]
        shaping = Effect(delay=effect.delay, jitter=effect.jitter, bandwidth=effect.bandwidth)
        if not shaping.idle:
            band = bands.setdefault(shaping, len(bands) + 2)
            filters.extend((address, band, peer) for address in sorted(addresses))
        if effect.loss:
            drops.extend((address, loss_match(effect.loss), peer) for address in sorted(addresses))
    if len(bands) > MAX_EFFECTS:
        raise ValueError(f"{len(bands)} distinct link effects on one node; at most {MAX_EFFECTS}")
    lines = ["set -e", CLEAR]
    if filters:
        lines.append("for dev in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do")
        lines.append('  [ "$dev" = lo ] && continue')
        lines.append(f'  tc qdisc add dev "$dev" root handle 1: htb default 0 direct_qlen {DIRECT_QLEN}')
        for effect, band in bands.items():
            rate = rate_bit(effect)
            lines.append(f'  tc class add dev "$dev" parent 1: classid 1:{band} htb rate {rate}bit ceil {rate}bit '
                         f"quantum 1514")
            if needs_netem(effect):
                lines.append(f'  tc qdisc add dev "$dev" parent 1:{band} handle {band}0: netem '
                             f"{netem_arguments(effect)}")
        for address, band, peer in filters:
            lines.append(f'  tc filter add dev "$dev" parent 1: protocol ip prio 1 u32 '
                         f"match ip dst {address}/32 flowid 1:{band}  # {peer}")
        lines.append("done")
    if drops:
        lines.append(f"nft add table ip {NFT_TABLE}")
        lines.append(f"nft add chain ip {NFT_TABLE} out '{{ type filter hook output priority 0; policy accept; }}'")
        for address, match, peer in drops:
            lines.append(f"nft add rule ip {NFT_TABLE} out ip daddr {address} {match}drop  # {peer}")
    return "\n".join(lines) + "\n"


def run_in_netns(client: Any, image: str, container_id: str | None, script: str, labels: Mapping[str, str],
                 timeout: float = HELPER_TIMEOUT) -> str:
    """Run ``script`` (``/bin/sh``) as root with ``NET_ADMIN`` in a helper container of ``image`` sharing the
    network namespace of container ``container_id`` (None: a namespace of its own, with only a loopback); return
    its output, raise RuntimeError when it fails.

    The helper is created, started, waited for and removed with its anonymous volumes explicitly: the image
    declares a ``VOLUME``, which a plain ``run(remove=True)`` would leave behind.
    """
    helper = _helper(client, image, container_id, ["/bin/sh", "-c", script], labels)
    try:
        helper.start()
        status = helper.wait(timeout=timeout)
        output = bytes(helper.logs(stdout=True, stderr=True)).decode(errors="replace")
        if status.get("StatusCode") != 0:
            raise RuntimeError(f"helper in {(container_id or 'its own')[:12]} network namespace failed "
                               f"({status.get('StatusCode')}): {output.strip()[-1000:]}")
        return output
    finally:
        helper.remove(force=True, v=True)


def netem_missing(client: Any, image: str, labels: Mapping[str, str]) -> str | None:
    """Why this Docker host's kernel cannot delay or drop packets (the last line of tc's error), or None when
    it has the netem qdisc; probed in a helper's own network namespace."""
    try:
        run_in_netns(client, image, None, PROBE, labels)
    except RuntimeError as exc:
        return str(exc).rsplit("): ", 1)[-1].strip()  # tc's own words: "Error: Specified qdisc kind is unknown."
    return None


CAPTURE_MOUNT = "/capture"
"""Where a capture helper sees the run's capture directory."""


def _helper(client: Any, image: str, container_id: str | None, command: list[str], labels: Mapping[str, str],
            **options: Any) -> Any:
    """Create (not start) a root helper container of ``image`` with ``NET_ADMIN`` running ``command`` in the
    network namespace of ``container_id`` (None: its own); no healthcheck (the node image has one)."""
    network_mode = f"container:{container_id}" if container_id else "none"
    return client.containers.create(
        image, command[1:], entrypoint=command[:1], user="0", network_mode=network_mode, cap_add=["NET_ADMIN"],
        labels=dict(labels), healthcheck={"test": ["NONE"]}, **options)


def capture_command(pcap: str, exclude_subnet: str | None) -> list[str]:
    """``tcpdump`` writing every packet of every interface but those of ``exclude_subnet`` to ``pcap``.

    ``-U`` writes each packet at once (a helper killed loses nothing already seen), ``-s 0`` keeps whole packets,
    ``-Z root`` keeps the file writable in the root-owned bind mount, ``-p`` leaves the interfaces alone.
    """
    command = ["tcpdump", "-i", "any", "-n", "-p", "-U", "-s", "0", "-Z", "root", "-w", f"{CAPTURE_MOUNT}/{pcap}"]
    if exclude_subnet:
        command += ["not", "net", exclude_subnet]
    return command


def start_capture(client: Any, image: str, container_id: str, directory: str, pcap: str,
                  exclude_subnet: str | None, labels: Mapping[str, str]) -> Any:
    """Start a ``tcpdump`` helper in container ``container_id``'s network namespace writing ``directory/pcap``
    (a host path); returns the helper container (stop it with :func:`stop_capture`)."""
    helper = _helper(client, image, container_id, capture_command(pcap, exclude_subnet), labels,
                     volumes={directory: {"bind": CAPTURE_MOUNT, "mode": "rw"}})
    helper.start()
    return helper


def capture_state(helper: Any) -> bool | str:
    """True once the capture helper's tcpdump is listening; its output when it has exited; False meanwhile."""
    helper.reload()
    output = bytes(helper.logs(stdout=True, stderr=True)).decode(errors="replace")
    if "listening on" in output:
        return True
    if helper.status in ("exited", "dead"):
        return output.strip() or f"tcpdump {helper.status}"
    return False


def stop_capture(helper: Any) -> None:
    """Stop a capture helper (SIGTERM: tcpdump closes its file) and remove it with its anonymous volumes."""
    try:
        helper.stop(timeout=5)
    finally:
        helper.remove(force=True, v=True)
