"""The small pure parts of the SIP edge (transport/sip.py): who may call, the SDP answer, G.711 samples.

Kept apart from the sockets so each is tested on its own (tests/test_sip.py): the offer/answer rules
of RFC 3264 for one audio stream (PCMU or PCMA at 8 kHz, 20 ms, RFC 4733 telephone-event when
offered), the source allow-list, and float32 ⇄ μ-law/A-law through aiortp's codecs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiosipua import SdpMessage
from aiosipua.sdp import MediaDescription
from aiosipua.sdp_negotiate import SdpNegotiationError, negotiate_sdp

RATE = 8000  # G.711
FRAME_MS = 20
FRAME = RATE * FRAME_MS // 1000  # 160 samples per RTP packet
CODECS = {0: "PCMU", 8: "PCMA"}  # static payload types we answer with, in the caller's order of preference
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NoCodec(ValueError):
    """The offer has no audio stream we can speak (answer 488 Not Acceptable Here)."""


# --- who may call --------------------------------------------------------------------------------
def parse_allow(specs: list[str]) -> list[Network]:
    """`--allow` values (`10.0.0.0/8`, `192.0.2.7`) as networks; a bad one is a clear ValueError."""
    nets = []
    for spec in specs:
        try:
            nets.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--allow {spec!r}: expected an address or network such as 192.0.2.7 or "
                             f"10.0.0.0/8") from None
    return nets


def is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_listen(host: str, allow: list[Network]) -> list[Network]:
    """The source networks that may call: loopback only when listening on loopback; anywhere else
    an explicit `--allow` list is required (scanners looking for toll fraud find an open SIP port
    within minutes), so this refuses to start without one."""
    if is_loopback_host(host):
        return list(allow) or list(LOOPBACK)
    if not allow:
        raise ValueError(f"refusing to listen for SIP on {host}: any address but loopback needs --allow NET "
                         f"(the networks callers come from, e.g. --allow 192.0.2.0/24 for your PBX); SIP "
                         f"ports open to the internet are probed for toll fraud within minutes")
    return list(allow)


def allowed(source: str, nets: list[Network]) -> bool:
    try:
        addr = ipaddress.ip_address(source)
    except ValueError:
        return False
    return any(addr.version == n.version and addr in n for n in nets)


# --- the SDP answer ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Media:
    """What was agreed for one call's audio."""

    payload_type: int  # 0 PCMU, 8 PCMA
    codec: str
    dtmf_payload_type: int | None  # the caller's telephone-event type, None when it offered none
    remote: tuple[str, int]  # where to send RTP


def _audio(offer: SdpMessage) -> MediaDescription:
    for m in offer.media:
        if m.media == "audio" and m.port:
            return m
    raise NoCodec("the offer has no audio stream")


def negotiate(offer: SdpMessage, local_ip: str, rtp_port: int) -> tuple[SdpMessage, Media]:
    """Our answer to `offer`: the caller's first of PCMU/PCMA at 8 kHz, 20 ms, plus telephone-event on
    the caller's own payload type when it offered one (RFC 4733). NoCodec when none fits."""
    audio = _audio(offer)
    dtmf = next((c.payload_type for c in audio.codecs
                 if c.encoding_name.lower() == "telephone-event" and (c.clock_rate or RATE) == RATE), None)
    ours = [c.payload_type for c in audio.codecs if c.payload_type in CODECS and (c.clock_rate or RATE) == RATE]
    try:
        answer, pt = negotiate_sdp(offer, local_ip, rtp_port, supported_codecs=ours or [-1],
                                   dtmf_payload_type=dtmf if dtmf is not None else 0, ptime=FRAME_MS)
    except SdpNegotiationError as exc:
        offered = [c.encoding_name or str(c.payload_type) for c in audio.codecs]
        raise NoCodec(f"no supported codec offered (offered {offered}; we speak PCMU, PCMA)") from exc
    for m in answer.media:  # we packetise 20 ms whatever the caller asked for
        if m.port and "ptime" in m.attributes:
            m.attributes["ptime"] = [str(FRAME_MS)]
    connection = audio.connection or offer.connection
    host = connection.address if connection is not None else ""
    if not host or host in ("0.0.0.0", "::"):
        raise NoCodec("the offer has no connection address (c=) for its audio")
    return answer, Media(pt, CODECS[pt], dtmf, (host, audio.port))

