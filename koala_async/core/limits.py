"""Bounds applied to every incoming message before it is used (core/envelope.py decodes under them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from koala_async.core.info import InfoLimits


@dataclass(frozen=True)
class Limits:
    """Bounds applied to every incoming message before it is used."""

    max_payload_bytes: int = 8 * 1024 * 1024
    max_samples: int = 200_000
    max_classes: int = 1_000
    max_features: int = 1 << 20
    max_sender_len: int = 128
    max_seq: int = 2**53
    max_version: int = 2**53
    # Parameter tensors in one weights message: MobileNetV2 has 314 (BatchNorm statistics included),
    # ResNet-50 320; FedAvg of either must pass. The payload size bounds the memory either way.
    max_tensors: int = 1024
    max_name_len: int = 128
    max_proxy_bytes: int = 1 << 30  # a whole proxy set, as a manifest announces it
    # Structure bounds, enforced while unpacking (core/bounded.py). The deepest message we send is a
    # status: envelope > body > info > 3 more levels of info = 6; weights reach 5 (envelope > body >
    # params > array > shape). The most objects: weights, about 12 per tensor, 1,024 tensors = 12,300.
    max_depth: int = 8
    max_objects: int = 16384
    info: InfoLimits = field(default_factory=InfoLimits)  # Status.info (core/info.py)
