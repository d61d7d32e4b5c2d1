"""The configs of the two node kinds: frozen dataclasses, loadable from the ``[server]`` and
``[client]`` tables of a TOML file (``koala_async.config.load_into`` names key and line on error)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from koala_async.core.finetune import FineTune
from koala_async.core.fusion import FusionConfig
from koala_async.core.modes import DEFAULT_MODE, Mode
from koala_async.core.resources import PROFILES
from koala_async.core.retention import RETENTIONS
from koala_async.core.staleness import StalenessPolicy
from koala_async.core.tiering import TierPolicy
from koala_async.core.topics import check_id
from koala_async.core.trust import TrustConfig
from koala_async.core.warmup import Warmup


def check_metrics_port(port: int | None) -> None:
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"metrics_port must be a TCP port (0 = any free one), not {port!r}")


def split_fractions(test: float, validation: float | None, proxy: float) -> float:
    """The validation fraction (unset: half the held-out ``test_fraction``), once the fractions
    :func:`koala_async.learning.data.split` takes are checked, before any data is read."""
    if not (0 < test < 1 and 0 < proxy < 1 and test + proxy < 1):
        raise ValueError("test_fraction and proxy_fraction must be in (0, 1) and sum below 1")
    if validation is None:
        return test / 2
    if not 0 <= validation < test:
        raise ValueError(f"validation_fraction {validation} must be in [0, test_fraction={test}): "
                         "validation is carved from the held-out part")
    return validation


def one_temperature(temperature: float, fusion: FusionConfig) -> FusionConfig:
    """The fusion's config at the server's temperature: left at its default it follows the server's;
    set to another value it is refused (a federation distills at one temperature)."""
    if fusion.temperature == temperature:
        return fusion
    if fusion.temperature != FusionConfig.temperature:
        raise ValueError(f"fusion.temperature {fusion.temperature} differs from temperature {temperature}: "
                         "a federation has one temperature; set only the server's temperature")
    return replace(fusion, temperature=temperature)


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server node needs; loadable from the ``[server]`` table of a TOML file."""

    node_id: str = "server"
    # One broker URL, or several (a list or a comma-separated string) to fail over between, in order.
    broker: str | tuple[str, ...] = "mqtt://127.0.0.1:1883"
    mqtt_version: int | None = None  # None: MQTT 5 where the broker offers it, else 3.1.1; 4 = 3.1.1 only
    federation: str = "default"
    mode: Mode = DEFAULT_MODE  # async | sync | fedavg | fedbuff (core/modes.py)
    round_timeout: float = 120.0  # sync and fedavg: seconds a round waits for its selected clients
    round_min_clients: int = 1  # sync and fedavg: fewer deliveries than this are not aggregated
    # Data: a dataset name from which proxy, validation and test splits are derived (as clients derive
    # shards), or explicit .npz files. Validation is carved from the held-out test_fraction: every
    # choice (the best version) is taken on it; the test split is only reported.
    dataset: str = "digits"
    seed: int = 0
    test_fraction: float = 0.2
    validation_fraction: float | None = None  # unset: half of test_fraction
    proxy_fraction: float = 0.25
    proxy_path: str | None = None
    test_path: str | None = None
    # The proxy set travels as a signed manifest plus retained chunks of this many bytes (under the
    # broker's packet limit: 16 MiB in nodes/mosquitto.conf). Clients with proxy_path need none.
    proxy_chunk_bytes: int = 4 * 1024 * 1024
    # Proxy samples per version that clients label and the knowledge carries logits on, chosen by the
    # server (core/proxy_schedule.py); 0 = the whole proxy set every time.
    proxy_subset: int = 0
    # The large model: a built-in name (``mobilenet_v2@64``), ``package.module:factory`` or an entry point
    # (learning/registry.py); its starting weights (a .safetensors file, a torch state dict, or
    # ``builtin:imagenet-mobilenet_v2``; a head for another class count is replaced), what of it trains,
    # and where it runs: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA, then MPS, then CPU).
    large_model: str | None = None
    large_weights: str | None = None
    finetune: FineTune = field(default_factory=FineTune)
    device: str = "cpu"
    # The federation's one distillation temperature: the server's fusion and distillation use it, and
    # it travels in the knowledge to every client's forward distillation (fusion.temperature follows it).
    temperature: float = 3.0
    lr: float = 1e-3
    batch_size: int = 64
    # per fresh arrival fused (up to max(4, buffer_size) arrivals per fusion); an arrival s versions
    # stale buys distill_steps * w(s) of them (core/staleness.py damped_steps: FedAsync damping)
    distill_steps: int = 40
    buffer_size: int = 1  # async and fedbuff: fuse (or average) after this many arrivals (FedBuff's K)
    global_lr: float = 1.0  # fedbuff: the server's step on the mean of a buffer's staleness-scaled deltas
    # async: the first version waits for this share of the available clients (or the timeout after the
    # first arrival), so the first knowledge is not one non-IID client's (core/warmup.py)
    warmup: Warmup = field(default_factory=Warmup)
    # Latency budget: a version's distillation stops after this many seconds (None = run all its
    # steps); what arrived meanwhile fuses into the next version, so arrival-to-published latency
    # stays bounded when many clients publish.
    max_distill_seconds: float | None = None
    # Benchmarks: admit and count updates but never fuse, distill or publish new versions.
    ingest_only: bool = False
    # Publish each update's verdict on the client's ack topic (QoS 1). Off saves one message per update
    # on a constrained link; clients then learn of acceptance only from the server's status counters.
    acks: bool = True
    latency_window: float = 30.0  # seconds of fuse latency in the snapshot's "fuse_latency_recent"
    # Distillation-time augmentation of proxy inputs: "shift" moves images by up to a pixel (vector
    # inputs are never augmented); "none" distills on the proxy inputs exactly as they are.
    augment: str = "shift"
    accepted_tiers: tuple[str, ...] = ()
    staleness: StalenessPolicy = field(default_factory=StalenessPolicy)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # The most clients whose latest logits the fusion keeps (the least recently heard from are dropped
    # first): bounds a version's fusion time and the checkpoint size however many client ids appear.
    max_contributions: int = 512
    # Forgetting: a client that sent nothing for this many versions loses its contribution to the
    # fused targets (one that leaves, or whose last will arrives, loses it at the next version).
    max_silent_versions: int = 50
    trust: TrustConfig = field(default_factory=TrustConfig)  # per-tier trust (docs/heterogeneous.md)
    status_interval: float = 2.0
    max_payload_bytes: int = 8 * 1024 * 1024
    threads: int = 1
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    report_path: str | None = None
    # Durability: checkpoint + journal directory (None = keep state in memory only), and how often an
    # idle server checkpoints its counters (a new version is always checkpointed before publishing).
    state_dir: str | None = None
    checkpoint_interval: float = 30.0
    # Signed updates: a JSON file {client id: key}; when set, unsigned or badly signed updates are refused.
    keys_file: str | None = None
    # Ed25519 private key (PEM; `koala keygen`) that signs knowledge, proxy set and global model; clients
    # pin its public key (``server_public_key``) and refuse what it did not sign.
    server_key_file: str | None = None
    # Prometheus metrics on http://metrics_host:metrics_port/metrics (None: not served; 0: a free port).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.mqtt_version not in (None, 4, 5):
            raise ValueError(f"mqtt_version must be 5, 4 (3.1.1) or unset, not {self.mqtt_version!r}")
        check_metrics_port(self.metrics_port)
        check_id(self.node_id, "node_id")
        if self.distill_steps < 1 or self.buffer_size < 1:
            raise ValueError("distill_steps and buffer_size must be >= 1")
        if self.max_contributions < 1:
            raise ValueError("max_contributions must be >= 1")
        if self.max_distill_seconds is not None and self.max_distill_seconds <= 0:
            raise ValueError("max_distill_seconds must be > 0 (or unset)")
        if self.latency_window <= 0:
            raise ValueError("latency_window must be > 0")
        from koala_async.learning.distill import AUGMENTATIONS

        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment {self.augment!r} is not one of {list(AUGMENTATIONS)}")
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        if not self.global_lr > 0:
            raise ValueError("global_lr must be > 0")
        if self.round_timeout <= 0 or self.round_min_clients < 1:
            raise ValueError("round_timeout must be > 0 and round_min_clients >= 1")
        if not 1024 <= self.proxy_chunk_bytes <= 15 * 1024 * 1024:
            raise ValueError("proxy_chunk_bytes must be in [1 KiB, 15 MiB] (a chunk is one MQTT message)")
        if self.proxy_subset < 0:
            raise ValueError("proxy_subset must be >= 0 (0 = the whole proxy set)")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature {self.temperature} must be a finite number > 0")
        if self.max_silent_versions < 1:
            raise ValueError("max_silent_versions must be >= 1")
        object.__setattr__(self, "validation_fraction",
                           split_fractions(self.test_fraction, self.validation_fraction, self.proxy_fraction))
        object.__setattr__(self, "fusion", one_temperature(self.temperature, self.fusion))
        from koala_async.learning.config_checks import check_server

        check_server(self)  # model names, weights, device: a ConfigError naming the key



@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3  # Adam, for the client's small model
    kd_weight: float = 1.0
    # Adam learning rate when the client trains the server's large model instead (fedavg mode): a
    # 620k-parameter CNN wants a smaller step than a 10k one (on digits, 3e-3 beat 1e-2 for it).
    fedavg_lr: float = 3e-3
    # Local epochs per round when training the large model (fedavg); unset = ``epochs``. A large model
    # costs a client hundreds of times the FLOPs of its tier: fewer epochs keep a round's length sane.
    fedavg_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or (self.fedavg_epochs is not None and self.fedavg_epochs < 1):
            raise ValueError("epochs and fedavg_epochs must be >= 1")


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client node needs; loadable from the ``[client]`` table of a TOML file."""

    node_id: str = "client-0"
    # One broker URL, or several (a list or a comma-separated string) to fail over between, in order.
    broker: str | tuple[str, ...] = "mqtt://127.0.0.1:1883"
    mqtt_version: int | None = None  # None: MQTT 5 where the broker offers it, else 3.1.1; 4 = 3.1.1 only
    federation: str = "default"
    # async | sync | fedavg | fedbuff (core/modes.py); a client also follows the rounds the server's knowledge
    # announces.
    mode: Mode = DEFAULT_MODE
    # Private data: an .npz file with x and y, or shard ``shard`` of ``num_shards`` Dirichlet shards
    # derived from ``dataset`` and ``seed`` (the same derivation the server uses for proxy and test),
    # or nothing (dataset "none"): an embedded client fed through ``add_samples``.
    data_path: str | None = None
    dataset: str | None = "digits"
    seed: int = 0
    shard: int = 0
    num_shards: int = 1
    alpha: float = 0.5
    test_fraction: float = 0.2
    validation_fraction: float | None = None  # the server's (see ServerConfig); unset: half of test_fraction
    proxy_fraction: float = 0.25
    tier: str | None = None  # architecture name; "auto" = chosen from measured resources; None = "small"
    profile: str | None = None  # simulate a device class ("pi-zero", "pi-4", "laptop", ...): caps the probe
    # False where many simulated devices share one host (the scenario runner's processes): the host's
    # load average is then theirs, not this device's, and counts as unknown (a profile sets its own).
    host_load: bool = True
    tier_policy: TierPolicy = field(default_factory=TierPolicy)
    train: TrainSettings = field(default_factory=TrainSettings)
    max_updates: int = 0  # 0 = keep contributing until stopped
    interval: float = 1.0  # seconds between trainings (with +-50% jitter)
    # Share of the proxy samples to publish logits for per update (of the server's scheduled subset
    # when it names one: [server] proxy_subset).
    proxy_subset: float = 1.0
    # The proxy set read locally instead of fetched: an .npz file (x) or a dataset name whose proxy
    # split is derived like the server's. Refused unless its proxy id is the server's manifest's.
    proxy_path: str | None = None
    # The class histogram of the private data, sent with each update. Off: private metadata a
    # logit-only federation does not need, and mean fusion was no better with it (docs/fusion.md).
    send_label_counts: bool = False
    # Share of the initial private samples kept out of training to evaluate the small model on
    # (status: holdout_accuracy; core/holdout.py); 0 trains on everything.
    holdout: float = 0.1
    model_out: str | None = None  # write the small model here after each training (safetensors)
    # Simulated device speed: a training lasts (its CPU time on this host, or the profile's FLOP time)
    # x slowdown; > 1 makes the device that many times slower than a host core (nodes/readiness.py).
    slowdown: float = 1.0
    threads: int = 1
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    max_payload_bytes: int = 64 * 1024 * 1024
    # Durability: where the pending update and seq counter live (None = nowhere); a pending update
    # older than this many knowledge versions at restart is discarded instead of published.
    state_dir: str | None = None
    pending_max_staleness: int = 10
    signing_key: str | None = None  # HMAC key shared with the server's keys file
    # The server this client trusts: its node id, and its Ed25519 public key (hex, base64, PEM or a file
    # path; printed by `koala keygen`). With a key, unsigned, forged or older knowledge is refused.
    server_id: str = "server"
    server_public_key: str | None = None
    keepalive: int = 30  # MQTT keepalive, seconds: a dead link is noticed after 1-1.5x this
    # Samples held in memory (initial data plus everything added), and which survive past that:
    # "reservoir" = a uniform sample of all ever seen (seeded), "newest" = a sliding window.
    max_samples: int = 10_000
    retention: str = "reservoir"
    min_samples: int = 10  # no training before this many samples are held
    # Input spec of an embedded client; inferred (first samples, then the server's proxy set) if unset.
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    event_queue: int = 256  # per events() consumer; a full queue drops its oldest event
    # End-to-end delivery (nodes/outbox.py): an update stays pending until the server's verdict and is
    # published again (same seq) after ack_timeout seconds without one; MQTT 5 brokers drop a copy that
    # waited that long (message expiry). await_verdicts = false trusts the broker's PUBACK instead (for
    # a server with acks = false).
    ack_timeout: float = 30.0
    await_verdicts: bool = True
    # Prometheus metrics on http://metrics_host:metrics_port/metrics (None: not served; 0: a free port).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.mqtt_version not in (None, 4, 5):
            raise ValueError(f"mqtt_version must be 5, 4 (3.1.1) or unset, not {self.mqtt_version!r}")
        check_metrics_port(self.metrics_port)
        if not self.ack_timeout > 0:
            raise ValueError(f"ack_timeout must be > 0 seconds, not {self.ack_timeout!r}")
        check_id(self.node_id, "node_id")
        if self.retention not in RETENTIONS:
            raise ValueError(f"retention must be one of {list(RETENTIONS)}, got {self.retention!r}")
        if self.max_samples < 1 or not 1 <= self.min_samples <= self.max_samples:
            raise ValueError("need 1 <= min_samples <= max_samples")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if self.event_queue < 1:
            raise ValueError("event_queue must be >= 1")
        if not 0 <= self.holdout < 1:
            raise ValueError("holdout must be in [0, 1)")
        if not 0 < self.proxy_subset <= 1:
            raise ValueError("proxy_subset must be in (0, 1]")
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard {self.shard} is not in [0, num_shards={self.num_shards})")
        if self.slowdown < 1:
            raise ValueError("slowdown must be >= 1")
        if self.keepalive < 1:
            raise ValueError("keepalive must be >= 1 second")
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        object.__setattr__(self, "validation_fraction",
                           split_fractions(self.test_fraction, self.validation_fraction, self.proxy_fraction))
        if self.profile is not None and self.profile not in PROFILES:
            raise ValueError(f"unknown device profile {self.profile!r}; known: {sorted(PROFILES)}")


