"""The records of a run folder, typed: what the driver measures (Measured), a line of
requests.jsonl (RequestRecord) and of cells.jsonl (CellRecord), the parts of environment.json the
report reads. On the shared floor: the driver builds Measured, the runner RequestRecord and
CellRecord, results/rundir.py writes them, and analysis reads them back through the same classes
(results/readback.py reads the files, as hostile input). SCHEMA_VERSION goes into each run
folder's run.json."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationInfo,
                      field_validator, model_validator)

from orchestrator.common.show import printable

Count = Annotated[int, Field(ge=0, strict=True)]
Positive = Annotated[int, Field(ge=1, strict=True)]
Tokens = Annotated[int, Field(ge=0, le=10**9, strict=True)]  # a request's token count: as the driver bounds it
Rate = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]  # NaN and Infinity are invalid
Time = Annotated[float, Field(allow_inf_nan=False, strict=True)]
# Names and labels fill tables, advice lines, chart titles and file names: read back from a file
# that is not orch's (orch writes none with a control character), they come with theirs shown.
Label = Annotated[StrictStr, AfterValidator(printable)]
Name = Annotated[str, Field(strict=True, min_length=1), AfterValidator(printable)]

SCHEMA_VERSION = 1  # raise it when a field changes meaning or a required field is added



class Record(BaseModel):
    """A line of a .jsonl file. Extra keys are kept: records carry more than the analysis reads."""

    model_config = ConfigDict(extra="allow")
    KEPT: ClassVar[str] = "with invalid fields dropped"

    @classmethod
    def required(cls) -> set[str]:
        return {name for name, f in cls.model_fields.items() if f.is_required()}

    def salvage(self, problems: list[str], when: str = "read back") -> None:
        """Called on a record kept after its invalid optional fields were dropped; `when` says
        where that happened (read back from a file, or as measured)."""

    def set(self, **fields: Any) -> None:
        """Fill in fields as a cell or request goes on (each one is then written)."""
        for name, value in fields.items():
            setattr(self, name, value)

    def line(self) -> dict[str, Any]:
        """What goes into the .jsonl file: the fields that were set, and nothing else."""
        # warnings=False: a field filled in by set() is not re-validated, so pydantic's serializer
        # would warn that server_metrics holds dicts rather than WindowMetrics; the JSON is the same.
        return self.model_dump(mode="json", exclude_unset=True, warnings=False)


class Measured(Record):
    """One request as the driver measured it: which request it was, and what the server sent."""

    KEPT: ClassVar[str] = "as failed"

    key: Name  # phase/c<concurrency>/r<repeat>/<prompt set>/<prompt id>: unique within a cell
    phase: Literal["warmup", "measured"]
    concurrency: Positive
    repeat: Count
    prompt_set: Name
    prompt_id: Label
    category: Label | None = None  # the prompt's, where its set has categories (SPEED-Bench's, MT-Bench's)
    sub_category: StrictStr | None = None
    ok: StrictBool
    error: StrictStr | None = None
    http_status: Annotated[int, Field(strict=True)] | None = None
    wall_start: Time | None = None  # Unix time the request's bytes went out
    send_late_s: Time | None = None  # open loop (measure/arrivals.py): how late it went out against its due time
    t_start: Time | None = None  # perf_counter seconds: bytes out, first text, last byte in
    t_first_token: Time | None = None
    t_end: Time | None = None
    completion_tokens: Count | None = None  # the server's count, never stream chunks
    completion_tokens_source: StrictStr | None = None  # usage, timings.predicted_n, retokenized
    prompt_tokens: Count | None = None
    chunks: Count | None = None  # stream events that carried text
    finish_reason: StrictStr | None = None
    text: StrictStr | None = None
    # llama.cpp's per-request timings (engines.StreamCounts), where the stream carries them.
    timings_prompt_n: Count | None = None
    timings_predicted_n: Count | None = None
    timings_draft_n: Count | None = None
    timings_draft_n_accepted: Count | None = None
    timings_prompt_per_second: Rate | None = None
    timings_predicted_per_second: Rate | None = None
    # vLLM's per-request acceptance (--per-request-spec-decode-metrics, the last stream event's
    # metrics.speculative_decoding): steps that drafted, their draft and accepted tokens, and the
    # steps by the number of drafts accepted (histogram[j]: exactly j).
    spec_num_spec_steps: Tokens | None = None
    spec_num_draft_tokens: Tokens | None = None
    spec_num_accepted_draft_tokens: Tokens | None = None
    spec_acceptance_histogram: Annotated[list[Tokens], Field(max_length=4097)] | None = None
    chunk_t: list[Time] | None = None  # seconds after t_start of each text chunk
    chunk_chars: list[Count] | None = None
    chunk_tokens: list[Count | None] | None = None  # cumulative completion tokens, where reported
    e2e_tok_s: Rate | None = None
    decode_tok_s: Rate | None = None
    ttft_s: Rate | None = None
    # Set (true) only when the first try met a kept-alive connection the server had just closed,
    # before it answered: this record is of the second try, on a new connection.
    reconnected: StrictBool | None = None
    redirected_to: StrictStr | None = None  # where a followed redirect took it (workload.follow_redirects)

    # Each engine's accepted count against its drafted count (llama.cpp's timings, vLLM's metrics).
    DRAFTED_OF: ClassVar[dict[str, str]] = {"timings_draft_n_accepted": "timings_draft_n",
                                            "spec_num_accepted_draft_tokens": "spec_num_draft_tokens"}

    @field_validator("timings_draft_n_accepted", "spec_num_accepted_draft_tokens")
    @classmethod
    def _accepted_within_drafted(cls, v: int | None, info: ValidationInfo) -> int | None:
        assert info.field_name is not None  # a field validator's
        name = cls.DRAFTED_OF[info.field_name]
        drafted = info.data.get(name)
        if v is not None and drafted is not None and v > drafted:
            raise ValueError(f"more than {name} ({drafted})")
        return v

    @field_validator("spec_acceptance_histogram")
    @classmethod
    def _histogram_adds_up(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        steps, accepted = info.data.get("spec_num_spec_steps"), info.data.get("spec_num_accepted_draft_tokens")
        if v is not None and steps is not None and sum(v) != steps:
            raise ValueError(f"counts {sum(v)} steps, not spec_num_spec_steps ({steps})")
        if v is not None and accepted is not None and sum(j * b for j, b in enumerate(v)) != accepted:
            raise ValueError(f"does not add up to spec_num_accepted_draft_tokens ({accepted})")
        return v

    @field_validator("t_first_token", "t_end")
    @classmethod
    def _in_order(cls, v: float | None, info: ValidationInfo) -> float | None:
        earlier = info.data.get("t_first_token") if info.field_name == "t_end" else None
        earlier = earlier if earlier is not None else info.data.get("t_start")
        if v is not None and earlier is not None and v < earlier:
            raise ValueError("earlier than the request's start or first token")
        return v

    @field_validator("chunk_t")
    @classmethod
    def _increasing(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(b < a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("times go backwards")
        return v

    def salvage(self, problems: list[str], when: str = "read back") -> None:
        """Invalid measurements: counted as a failed request, never as a measured one."""
        note = f"invalid record {when}: " + "; ".join(problems)
        self.error = note if self.ok or not self.error else f"{self.error}; {note}"
        self.ok = False
        self.e2e_tok_s = self.decode_tok_s = self.ttft_s = None


class RequestRecord(Measured):
    """One line of requests.jsonl: a measured request and the cell it ran in."""

    cell_id: Name
    engine: Name
    method: Label
    n_spec: Count
    endpoint: StrictStr | None = None  # /v1/completions or /v1/chat/completions
    prompt_tokens_low: StrictBool | None = None  # fewer prompt tokens than half the prompt's words
    block: Count | None = None  # workload.blocks: which replicate start of its cell (None: before blocks, 0)

    @classmethod
    def of(cls, measured: Measured, **cell: Any) -> RequestRecord:
        """`measured` (already checked) in the cell it ran in; not validated a second time."""
        fields = {**measured.model_dump(exclude_unset=True), **cell}
        return cls.model_construct(_fields_set=set(fields), **fields)


class WindowMetrics(BaseModel):
    """A cell's /metrics deltas over one concurrency level's measured window."""

    model_config = ConfigDict(extra="allow")
    acceptance_rate: Rate | None = None
    mean_acceptance_length: Rate | None = None


Text = StrictStr | None
Reading = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # a sampled gauge or counter delta


class RequestCost(BaseModel):
    """A measured request's share of its window's CPU seconds and joules (telemetry/window.py)."""

    model_config = ConfigDict(extra="forbid")
    cpu_s: Reading | None = None
    energy_j: Reading | None = None


class GpuWindow(BaseModel):
    """One GPU over one measured window (NVML, or nvidia-smi in the engine's container)."""

    model_config = ConfigDict(extra="allow")
    index: Count
    name: Text = None
    mem_peak_b: Reading | None = None
    mem_total_b: Reading | None = None  # the GPU's memory: headroom = total - peak
    power_mean_w: Reading | None = None
    power_peak_w: Reading | None = None
    sm_mhz_mean: Reading | None = None
    util_pct_mean: Reading | None = None
    temp_c_peak: Reading | None = None
    energy_j: Reading | None = None
    energy_source: Text = None  # "NVML energy counter" or "power integrated"


class WindowTelemetry(BaseModel):
    """What the sampler saw over one concurrency level's measured window. A reading that could
    not be taken is None, with the reason in `missing` (and `gpu`, `energy_source`): never 0."""

    model_config = ConfigDict(extra="allow")
    seconds: Reading
    samples: Count
    interval_s: Reading
    sampler_cpu_s: Reading | None = None  # the sampler thread's own CPU time
    missing: dict[StrictStr, StrictStr] = {}
    cpu_s: Reading | None = None  # the server's process tree
    cpu_util: Reading | None = None  # cores busy on average
    rss_peak_b: Reading | None = None
    energy_j: Reading | None = None
    energy_source: Text = None
    power_mean_w: Reading | None = None
    gpu: Text = None  # "0: NVIDIA H200", or "no GPU (why)"
    gpus: list[GpuWindow] | None = None
    per_request: dict[StrictStr, RequestCost] = {}


class Roofline(BaseModel):
    """The single-stream decode limit of a cell's model on its hardware: bytes of weights read
    per token / memory bandwidth (telemetry/roofline.py)."""

    model_config = ConfigDict(extra="allow")
    weight_bytes: Annotated[int, Field(gt=0, strict=True)] | None = None
    weight_source: Text = None
    bandwidth_gb_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    bandwidth_source: Text = None
    limit_tok_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    unknown: Text = None  # why there is no limit

    @model_validator(mode="after")
    def _limit_has_its_basis(self) -> Self:
        if self.limit_tok_s is not None and (self.weight_bytes is None or self.bandwidth_gb_s is None):
            raise ValueError("limit_tok_s without weight_bytes and bandwidth_gb_s")
        return self


class CellPlacement(BaseModel):
    """Where a cell's server ran, and what ran beside it (sweep/placement.py, sweep/cluster.py)."""

    model_config = ConfigDict(extra="allow")
    node: Label | None = None  # this host's name, or a Ray node: "<host>-<node id prefix>"
    host: Label | None = None  # the machine's hostname: cells on one host share its CPU, PCIe, memory bandwidth
    device: Label | None = None  # "cores 0-3", "gpu 1", "any"
    gpus: list[Count] | None = None
    cores: list[Count] | None = None
    beside: list[Name] = []  # cells whose servers ran on the same host at some time during this one
    earlier: list[Label] = []  # where earlier starts of this cell ran ("host, device"), if elsewhere:
    # a resumed cell keeps their requests, so its figures mix two machines


class CellRecord(Record):
    """One line of cells.jsonl: one server start, what ran on it and how it ended. Written when
    the cell ends (a resumed run appends a newer line for the same cell)."""

    cell_id: Name
    engine: Name
    method: Label
    n_spec: Count
    status: Name  # ok, partial, failed, interrupted
    block: Count | None = None  # workload.blocks: which replicate start this is (None: before blocks, 0)
    kind: Text = None
    launcher: Text = None
    started_at: Time | None = None
    model: Text = None
    api: Text = None
    argv: list[StrictStr] | None = None
    command: Text = None  # what a user would type, secrets hidden
    endpoint: Text = None
    cache: Text = None  # how prompt or prefix caching was set
    ready_s: Rate | None = None
    pid: Count | None = None  # process launcher
    url: Text = None  # external launcher, password hidden
    container_id: Text = None  # Docker launcher
    image: Text = None
    image_id: Text = None
    image_digests: list[StrictStr] | None = None
    template: Text = None
    server_metrics: dict[str, WindowMetrics | None] | None = None  # /metrics deltas per concurrency level
    requests_ok: Count | None = None
    requests_failed: Count | None = None
    requests_not_sent: Count | None = None
    repeats: dict[str, Count] | None = None  # workload.target_ci: repeats each concurrency level took
    telemetry: dict[str, WindowTelemetry] | None = None  # per concurrency level (telemetry/)
    roofline: Roofline | None = None
    placement: CellPlacement | None = None  # a sweep with [placement]: where the cell ran
    prompt_check: Text = None
    error: Text = None
    log_tail: Text = None
    traceback: Text = None
    phases: dict[str, float] | None = None  # seconds per phase of the cell's wall time
    seconds: Rate | None = None

    @field_validator("server_metrics", "telemetry")
    @classmethod
    def _keyed_by_concurrency(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in v or {}:
            if not (key.isascii() and key.isdecimal() and len(key) <= 9):  # int() of 5000 digits raises
                raise ValueError(f"key {key[:20]!r} is not a concurrency level")
        return v


class EngineEnv(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: StrictStr = ""
    model: StrictStr = "?"


class Environment(BaseModel):
    """The parts of environment.json the report reads (machine label, models, overlay)."""

    model_config = ConfigDict(extra="allow")
    cpu: StrictStr | None = None
    cpu_count: Count | None = None
    cpu_flags: dict[StrictStr, StrictBool] | None = None
    gpu: list[StrictStr] | None = None
    engines: dict[str, EngineEnv] = {}


def machine_label(env: dict[str, Any]) -> str:
    """The machine a run's environment.json describes, in a few words (its first GPU, else its CPU),
    one line with any control character shown: the file is read back as hostile input."""
    gpu = env.get("gpu") or []
    if gpu:
        return printable(gpu[0])
    isa = instruction_sets(env["cpu_flags"]) if env.get("cpu_flags") else ""
    isa = f"; {isa}" if isa else ""
    return printable(f"{env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores{isa}, no GPU)")


def instruction_sets(flags: dict[str, bool]) -> str:
    """"AVX2, no AVX-512, no AMX": what a CPU engine's speed depends on, in a few words."""
    def named(label: str, *names: str) -> str | None:
        if any(flags.get(n) is True for n in names):
            return label
        return f"no {label}" if any(flags.get(n) is False for n in names) else None  # absent: unknown
    said = [named("AVX2", "avx2"), named("AVX-512", "avx512f"), named("AMX", "amx_tile", "amx_bf16")]
    return ", ".join(s for s in said if s)
