"""The analytic cost model (fleet/cost_model.py, fleet/pricing.py): FLOPs against a hand-worked example, bytes
against a real PEFT adapter, memory refusals, and a deterministic simulated clock."""

import numpy as np
import pytest

from fleet.arch import ArchShape, Kept
from fleet.cost_model import Job, Kernels, Quantized, adapter_bytes, backward_cost, forward_cost, job_cost
from strategies.events import OnRound
from runconfig.load import ConfigError, compose

pytestmark = pytest.mark.cost

# hidden 8, 2 query heads sharing 1 KV head (GQA, head dim 4), MLP 16, one layer, vocab 10
TOY = ArchShape("toy", hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                vocab_size=10)
QV = ("q_proj", "v_proj")
FP32 = Kernels(act_bytes=4, weight_bytes=4.0, quant="emulated")
T, S, R = 4, 4, 2  # tokens (one sequence of 4), sequence length, LoRA rank


def test_forward_flops_hand_worked_dense_gqa():
    # linears (in x out): q 8x8, k 8x4, v 8x4, o 8x8, gate 8x16, up 8x16, down 16x8 -> 576 MACs per token
    linears = 2 * T * (64 + 32 + 32 + 64 + 128 + 128 + 128)
    attention = 4 * T * 8 * (S + 1) / 2  # QK^T and PV over 2 heads * 4 dims, causal: (4+1)/2 keys on average
    lora = 2 * T * R * (8 + 8) + 2 * T * R * (8 + 4)  # q (8->8) and v (8->4)
    head = 2 * T * 8 * 10
    assert forward_cost(TOY, TOY.dense(), R, QV, T, S, FP32).gemm_flops == linears + attention + lora + head == 6016


def test_backward_flops_hand_worked_frozen_base():
    linears = 2 * T * 576 - 2 * T * (64 + 32 + 32)  # layer 0's q/k/v inputs are embeddings: no gradient
    attention = 2 * 4 * T * 8 * (S + 1) / 2
    lora = 4 * T * R * (16 + 12) - 2 * T * R * 8 * 2  # dA, dB, two activation grads; minus dx through q/v's A
    head = 2 * T * 8 * 10  # dX only: the tied embedding is frozen
    assert backward_cost(TOY, TOY.dense(), R, QV, T, S, FP32).gemm_flops == linears + attention + lora + head == 5504


def test_pruned_flops_keep_what_the_pruning_rule_keeps():
    kept = TOY.kept(0.5)  # within groups: 1 of 2 query heads per KV group; 8 of 16 channels
    assert kept == Kept(q_heads=1, kv_heads=1, channels=8)
    linears = 2 * T * (32 + 32 + 32 + 32 + 64 + 64 + 64)  # q 8x4, k 8x4, v 8x4, o 4x8, gate/up 8x8, down 8x8
    attention = 4 * T * 4 * (S + 1) / 2
    lora = 2 * T * R * (8 + 4) * 2
    assert forward_cost(TOY, kept, R, QV, T, S, FP32).gemm_flops == linears + attention + lora + 2 * T * 80
    assert TOY.kept(0.5, "whole_groups") == Kept(q_heads=2, kv_heads=1, channels=8)  # the one group stays


def test_each_trainer_counts_its_own_passes():
    seg = ((3, TOY.dense()),)
    backprop = job_cost(TOY, Job(True, R, QV, 1, S, seg), FP32)
    fwd, bwd = forward_cost(TOY, TOY.dense(), R, QV, T, S, FP32), backward_cost(TOY, TOY.dense(), R, QV, T, S, FP32)
    assert backprop.total().gemm_flops == pytest.approx(3 * (fwd.gemm_flops + bwd.gemm_flops))
    lora_params = 2 * (8 + 8) + 2 * (8 + 4)
    assert backprop.update.elementwise_bytes == 3 * 7 * 4 * lora_params  # AdamW: 7 fp32 values per parameter
    w4a8 = Quantized(weight_bits=4, group_size=8, act_bits=8)
    zo = job_cost(TOY, Job(False, R, QV, 1, S, seg, forwards_per_step=4, quantized=w4a8), FP32)
    assert zo.backward.gemm_flops == 0
    assert zo.forward.gemm_flops == pytest.approx(3 * 4 * fwd.gemm_flops)  # 2 directions x 2 forwards, 3 steps
    # the emulated (host) quantized path moves more bytes than float weights; fused device kernels read fewer
    device = Kernels(act_bytes=2, weight_bytes=2.0, quant="fused")
    assert forward_cost(TOY, TOY.dense(), R, QV, T, S, FP32, w4a8).elementwise_bytes > fwd.elementwise_bytes
    assert forward_cost(TOY, TOY.dense(), R, QV, T, S, device, w4a8).gemm_bytes < \
        forward_cost(TOY, TOY.dense(), R, QV, T, S, device).gemm_bytes


def _real_adapter(shape: ArchShape, rank: int, targets, level: float):
    """A real LlamaForCausalLM of ``shape`` with a PEFT LoRA adapter, pruned to ``level`` by the project's rule."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.lora import adapter_arrays, attach_lora
    from pruning.prune import prune_model
    from pruning.structure import Dims, Structure, select
    from runconfig.schema import LoraConfig

    config = LlamaConfig(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
                         intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
                         num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if level > 0:
        dims = Dims.of(config)
        rng = np.random.default_rng(0)
        structure = select([rng.random(dims.num_heads) for _ in range(dims.num_layers)],
                           [rng.random(dims.intermediate_size) for _ in range(dims.num_layers)],
                           Structure.dense(dims), dims, level)
        prune_model(model, structure, dims)
    return adapter_arrays(attach_lora(model, LoraConfig(rank=rank, alpha=2.0 * rank, target_modules=list(targets)),
                                      0, rank))


@pytest.mark.parametrize("level", [0.0, 0.5])
def test_adapter_bytes_match_the_real_adapter_on_the_wire(level):
    """The real adapter's tensor bytes; in a Flower record each tensor adds a fixed few hundred bytes (an .npy
    header, its name and metadata), which the clock leaves out."""
    from protocol.messages import to_array_record

    shape = ArchShape("gqa", hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, vocab_size=50)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    adapter = _real_adapter(shape, 4, targets, level)
    real = sum(v.nbytes for v in adapter.values())
    assert adapter_bytes(shape, shape.kept(level), 4, targets, wire_bytes=4) == real
    record = to_array_record(adapter)
    assert real < record.count_bytes() < real + 400 * len(record)


def test_priced_shapes_match_the_published_parameter_counts():
    from fleet.pricing import priced_shape

    expected = {"smollm2-135m": 134.5e6, "qwen2.5-0.5b": 494.0e6, "llama-3.2-1b": 1235.8e6}  # model cards
    for name, params in expected.items():
        s = compose(["+fleet=8dev_test", f"cost={name}"])
        assert priced_shape(s, TOY).num_params() == pytest.approx(params, rel=2e-3)
    assert priced_shape(compose(["+fleet=8dev_test"]), TOY) is TOY  # cost=trained prices the trained model


def _pricer_and_devices(overrides):
    from fleet.devices import build_fleet
    from fleet.pricing import Pricer

    s = compose(["+fleet=8dev_test", "simulation=ray", *overrides])  # measured clocks need unbatched devices
    return s, Pricer(s, TOY), build_fleet(s.fleet, s.seed)


def test_memory_binds_on_a_priced_1b_model():
    """Llama-3.2-1B at fp16 with backprop does not fit a Pixel 8's usable memory; 4-bit ZeroQAT does."""
    s, pricer, devices = _pricer_and_devices(["cost=llama-3.2-1b"])
    pixel = next(d for d in devices if d.class_name == "pixel_8")
    agx = next(d for d in devices if d.class_name == "jetson_agx_xavier")
    backprop = pricer.job("lora_backprop", 8, s.client.batch_size, s.client.local_steps)
    zeroqat = pricer.job("zeroqat", 8, s.client.batch_size, s.client.local_steps)
    assert pricer.memory(backprop) > pixel.usable_memory_bytes > pricer.memory(zeroqat)
    assert pricer.memory(backprop) < agx.usable_memory_bytes
    assert pricer.memory(pricer.job("lora_backprop", 8, 8, 1, [0.5])) < pricer.memory(backprop)  # pruning shrinks it


def test_strategy_never_sends_work_that_does_not_fit_and_counts_it():
    from strategies.fleet_fedavg import FleetFedAvg

    s, _, devices = _pricer_and_devices(["cost=llama-3.2-1b", "client.trainer=lora_backprop"])
    strategy = FleetFedAvg(s, devices, TOY, concurrency=1)
    strategy.node_of_device = {d.index: 100 + d.index for d in devices}
    skipped = 0
    for rnd in range(1, 6):
        cohort, ledger = strategy.select(rnd, len(devices), "train", 0)
        assert cohort and all(d.class_name != "pixel_8" for d in cohort)
        skipped += ledger.skipped_memory
    assert skipped >= 1


def test_a_model_that_fits_no_device_is_refused_before_any_work():
    from server.preflight import check_fits

    s, _, devices = _pricer_and_devices(["cost=llama-3.2-1b", "client.trainer=lora_backprop"])
    for d in devices:
        d.profile.memory_gb = 2.0
    with pytest.raises(ConfigError, match="Llama-3.2-1B"):
        check_fits(s, TOY, devices)


def test_priced_time_is_deterministic_and_slower_for_bigger_models():
    times = {}
    for cost in ("trained", "smollm2-135m", "llama-3.2-1b"):
        s, pricer, devices = _pricer_and_devices([f"cost={cost}"])
        tx2 = next(d for d in devices if d.class_name == "jetson_tx2")
        job = pricer.job("lora_backprop", 8, 8, 12)
        t = pricer.device_time(tx2, "lora_backprop", job, (10**6, 10**6), (123.0, 45.0), (1, 1))
        assert t == pricer.device_time(tx2, "lora_backprop", job, (10**6, 10**6), (0.1, 99.0), (2, 2))
        assert t.upload_s == pytest.approx(8e6 / (tx2.profile.uplink_mbps * 1e6))
        times[cost] = t.compute_s
    assert times["trained"] < times["smollm2-135m"] < times["llama-3.2-1b"]


def test_other_clocks_use_what_was_measured_and_sent():
    s, pricer, devices = _pricer_and_devices(["cost.clock=host_scaled"])
    tx2 = next(d for d in devices if d.class_name == "jetson_tx2")
    job = pricer.job("lora_backprop", 8, 8, 12)
    t = pricer.device_time(tx2, "lora_backprop", job, (10**9, 10**9), (2.0, 50.0), (1_000_000, 500_000))
    assert t.compute_s == pytest.approx(2.0 * 50.0 / (tx2.profile.peak_gflops * tx2.profile.efficiency["lora_backprop"]))
    assert t.download_s == pytest.approx(8e6 / (tx2.profile.downlink_mbps * 1e6))
    s, pricer, _ = _pricer_and_devices(["cost.clock=measured"])
    assert pricer.device_time(tx2, "lora_backprop", job, (0, 0), (2.0, 50.0), (0, 0)).compute_s == 2.0


def test_bad_cost_configs_name_the_key():
    with pytest.raises(ConfigError, match="cost.clock"):
        compose(["+fleet=8dev_test", "cost.clock=wallclock"])
    with pytest.raises(ConfigError, match="cost.shape.num_key_value_heads"):
        compose(["+fleet=8dev_test", "cost=smollm2-135m", "cost.shape.num_key_value_heads=2"])
    with pytest.raises(ConfigError, match="efficiency"):
        compose(["+fleet=8dev_test", "~fleet.classes.pixel_8.efficiency.zeroqat"])
    with pytest.raises(ConfigError, match="fleet.classes.pixel_8.operator_us"):
        compose(["+fleet=8dev_test", "fleet.classes.pixel_8.operator_us=-1"])


def test_two_runs_of_a_seed_give_the_same_simulated_clock(fast_overrides, tmp_path):
    """The analytic clock depends on the work only: two in-process runs agree to the last bit."""
    from models.base_checkpoint import load_base_model
    from models.lora import adapter_arrays, attach_lora
    from protocol.messages import to_array_record
    from runconfig.plain import to_plain
    from server.preflight import prepare
    from simulations.inprocess import InProcessGrid
    from strategies import strategy_class

    clocks = []
    for run in range(2):
        s = compose(["+fleet=8dev_test", "rounds=2", "client.local_steps=2", "federation.eval_cohort_size=0",
                     "cost=smollm2-135m", f"tracking.uri=sqlite:///{tmp_path}/m{run}.db", *fast_overrides])
        prepared = prepare(s, show_progress=False)
        strategy = strategy_class(s.method.name)(s, prepared.devices, prepared.shape, concurrency=1)
        rounds = []
        strategy.observers.append(OnRound(lambda r, m: rounds.append(m)))
        peft = attach_lora(load_base_model(prepared.base_folder), s.method.lora, s.seed)
        strategy.start(InProcessGrid(to_plain(s), s.fleet.size), to_array_record(adapter_arrays(peft)), num_rounds=2)
        clocks.append([m["clock/sim_time_s"] for m in rounds])
    assert clocks[0] == clocks[1] and clocks[0][-1] > 1.0  # priced as SmolLM2-135M: seconds, not milliseconds


# ------------------------------------------------------------------ per-step overhead and measured memory
ALL7 = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _layers(n: int) -> ArchShape:
    return ArchShape(f"l{n}", hidden_size=64, intermediate_size=96, num_layers=n, num_heads=2, num_kv_heads=1,
                     head_dim=32, vocab_size=64)


def test_operator_count_scales_with_layers_not_with_width_or_pruning():
    from fleet.cost_model import step_operators

    def ops(shape, level=0.0, **kw):
        return step_operators(shape, Job(True, 4, ALL7, 2, 8, ((1, shape.kept(level)),), **kw), FP32)

    per_layer = ops(_layers(4)) - ops(_layers(2))
    assert per_layer > 0 and ops(_layers(8)) - ops(_layers(4)) == 2 * per_layer
    wide = ArchShape("wide", hidden_size=1024, intermediate_size=4096, num_layers=4, num_heads=16, num_kv_heads=8,
                     head_dim=64, vocab_size=5000)
    assert ops(wide) == ops(_layers(4)) == ops(_layers(4), 0.5)  # the same operators, whatever their size
    w4a8 = Quantized(weight_bits=4, group_size=32, act_bits=8)
    zo_one = step_operators(_layers(4), Job(False, 4, ALL7, 2, 8, ((1, _layers(4).dense()),), 2, w4a8), FP32)
    zo_two = step_operators(_layers(4), Job(False, 4, ALL7, 2, 8, ((1, _layers(4).dense()),), 4, w4a8), FP32)
    assert zo_two > 2 * zo_one - 100  # two directions: four forwards and twice the perturbations
    cost = job_cost(_layers(4), Job(True, 4, ALL7, 2, 8, ((3, _layers(4).dense()),)), FP32).total()
    assert cost.operators == 3 * ops(_layers(4))
    assert cost.seconds(1e12, 1e11, operator_s=1e-5) == pytest.approx(cost.seconds(1e12, 1e11) + 3e-5 * ops(_layers(4)))


def test_operator_count_matches_what_a_real_step_dispatches():
    """The structural count against every aten call of one real LoRA backprop step (forward, backward, AdamW)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig

    from fleet.cost_model import step_operators
    from models.architectures import build_model
    from models.evaluation import next_token_stats
    from models.lora import attach_lora
    from runconfig.schema import LoraConfig

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    for layers in (1, 3):
        shape = _layers(layers)
        config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True)
        model = attach_lora(build_model(config, 0), LoraConfig(rank=4, alpha=8.0, target_modules=list(ALL7)), 0, 4)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, foreach=False)
        x = torch.randint(3, 64, (2, 8))

        def step():
            loss_sum, _, tokens = next_token_stats(model(input_ids=x).logits, x)
            optimizer.zero_grad(set_to_none=True)
            (loss_sum / tokens).backward()
            optimizer.step()

        step()  # AdamW's state exists from the second step on
        Count.n = 0
        with Count():
            step()
        counted = step_operators(shape, Job(True, 4, ALL7, 2, 8, ((1, shape.dense()),)), FP32)
        assert counted == pytest.approx(Count.n, rel=0.1)


# Peak memory of one LoRA backprop step (rank 8, all 7 projections) measured on an H200 (torch 2.11 + CUDA 13,
# bf16 autocast, SDPA, random weights of the priced shapes; issue 21): GiB by (cost config, seq len, base bytes).
H200_PEAK_GIB = {("smollm2-135m", 64, 4): 1.53, ("smollm2-135m", 512, 4): 6.21, ("qwen2.5-0.5b", 64, 4): 4.46,
                 ("qwen2.5-0.5b", 512, 4): 15.44, ("llama-3.2-1b", 64, 4): 8.65, ("llama-3.2-1b", 512, 4): 20.03,
                 ("smollm2-135m", 64, 2): 1.03, ("qwen2.5-0.5b", 64, 2): 2.61, ("llama-3.2-1b", 64, 2): 4.05}


def test_memory_model_reproduces_the_measured_gpu_peaks():
    """fp32 or bf16 base under bf16 autocast: the autocast weight copies, bf16 activations and fp32 loss buffers."""
    from fleet.cost_model import DEVICE_ALLOCATOR_BYTES, training_memory
    from fleet.pricing import priced_shape

    for (cost, seq, base_bytes), measured in H200_PEAK_GIB.items():
        shape = priced_shape(compose(["+fleet=8dev_test", f"cost={cost}"]), TOY)
        gpu = Kernels(act_bytes=2, weight_bytes=base_bytes, foreach_optimizer=True,
                      allocator_bytes=DEVICE_ALLOCATOR_BYTES)
        predicted = training_memory(shape, Job(True, 8, ALL7, 8, seq, ((1, shape.dense()),)), gpu) / 2**30
        assert 0.95 * measured <= predicted <= 1.25 * measured, (cost, seq, base_bytes, predicted, measured)


def test_memory_prediction_covers_a_step_measured_in_a_fresh_process():
    """Peak resident memory of a real backprop step (benchmarks/peak_memory.py) against the host's prediction."""
    from benchmarks.peak_memory import llama_config, measure
    from fleet.cost_model import HOST_ALLOCATOR_FRACTION, training_memory

    spec = {"hidden": 128, "intermediate": 352, "layers": 2, "heads": 2, "kv_heads": 1, "head_dim": 64, "vocab": 4096,
            "batch": 4, "seq": 64, "trainer": "lora_backprop", "sparsity": 0.0, "rank": 4}
    shape = ArchShape.from_hf_config(llama_config(spec), "probe")
    host = Kernels(act_bytes=4, weight_bytes=4.0, quant="emulated", allocator_fraction=HOST_ALLOCATOR_FRACTION)
    predicted = training_memory(shape, Job(True, 4, ALL7, 4, 64, ((1, shape.dense()),)), host)
    measured = measure(spec, timeout=600)["measured_bytes"]
    assert measured > shape.num_params() * 4  # the step holds at least the weights
    assert predicted >= 0.95 * measured


def test_forward_only_loss_buffers_are_counted_from_torchs_allocations():
    """ZeroQAT's batch loss (next_token_stats under inference_mode) holds 8 bytes per logit in bf16, 12 in fp32."""
    import torch

    from benchmarks.live_memory import peak_live_bytes
    from fleet.cost_model import FORWARD_LOSS_BYTES_PER_LOGIT
    from models.evaluation import next_token_stats

    b, s, v = 2, 33, 3000
    y = torch.randint(0, v, (b, s))
    for dtype, mixed in ((torch.bfloat16, True), (torch.float32, False)):
        def loss(dtype=dtype):
            with torch.inference_mode():
                next_token_stats(torch.randn(b, s, v, dtype=dtype), y)  # as batch_loss hands the logits over
        peak, _ = peak_live_bytes(loss)
        logits = b * s * v
        assert FORWARD_LOSS_BYTES_PER_LOGIT[mixed] * logits * 0.95 <= peak <= FORWARD_LOSS_BYTES_PER_LOGIT[mixed] * logits


def test_fedspine_memory_counts_the_dense_base_its_trainer_keeps():
    """client/trainers/fedspine_prune.py trains a pruned copy (build_submodel) and keeps the dense base: the priced
    weights of a FedSpine job are the tensors both models really hold."""
    import copy
    from dataclasses import replace

    import numpy as np
    import torch

    from benchmarks.gpu import build_model
    from benchmarks.live_memory import tensor_bytes
    from benchmarks.peak_memory import llama_config
    from client.trainers.fedspine_prune import build_submodel
    from fleet.cost_model import memory_terms, training_memory
    from fleet.pricing import Pricer
    from models.lora import adapter_arrays, attach_lora
    from pruning.structure import Dims, Structure, select
    from runconfig.schema import LoraConfig

    spec = {"hidden": 64, "intermediate": 160, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 16, "vocab": 512,
            "seq": 32}
    base = build_model(llama_config(spec), torch.device("cpu"))
    dims = Dims.of(base.config)
    lora = LoraConfig(rank=4, alpha=8.0, target_modules=list(ALL7))
    full = adapter_arrays(attach_lora(copy.deepcopy(base), lora, 0, 4))
    rng = np.random.default_rng(0)
    structure = select([rng.random(dims.num_heads) for _ in range(dims.num_layers)],
                       [rng.random(dims.intermediate_size) for _ in range(dims.num_layers)],
                       Structure.dense(dims), dims, 0.5)
    model = build_submodel(base, structure, dims, lora, 4, 0, full)
    frozen = [p for m in (base, model) for p in m.parameters() if not p.requires_grad]
    held = tensor_bytes(frozen)

    settings = compose(["+fleet=8dev_test", "method=fedspine"])
    shape = ArchShape.from_hf_config(base.config, "probe")
    pricer = Pricer(settings, shape)
    fp32 = Kernels(act_bytes=4, weight_bytes=4.0, quant="emulated")
    kept = shape.kept(structure.level(dims), settings.method.fedspine.head_rule)
    job = pricer.job("fedspine_prune", 4, 2, 1, [structure.level(dims)])
    assert job.keeps_dense_base and not pricer.job("lora_backprop", 4, 2, 1).keeps_dense_base
    terms = memory_terms(shape, job, fp32, kept)
    assert terms["base_weights"] + terms["dense_base"] == held  # the pruned copy's weights and the dense base's
    alone = replace(job, keeps_dense_base=False)
    assert training_memory(shape, job, fp32) - training_memory(shape, alone, fp32) == tensor_bytes(base.parameters())


def test_memory_prediction_matches_the_live_bytes_of_a_step():
    """Peak bytes torch holds live during a real step (fresh process, torch.profiler) against the host prediction
    without the allocator share: backprop (two steps with AdamW) and ZeroQAT (one SPSA step), pruned to 0.5."""
    from benchmarks.cost_model import HOST_KERNELS, memory_job, tiny_spec
    from benchmarks.live_memory import measure
    from fleet.cost_model import training_memory

    spec = tiny_spec(128, 2)
    for trainer in ("lora_backprop", "zeroqat"):
        measured = measure({**spec, "batch": 2, "seq": 64, "trainer": trainer, "sparsity": 0.5, "rank": 8,
                            "threads": 1}, timeout=300)["live_bytes"]
        shape, job = memory_job(spec, trainer, 0.5, 2, 64)
        predicted = training_memory(shape, job, Kernels(**HOST_KERNELS))
        assert 0.95 * measured <= predicted <= 1.25 * measured, (trainer, predicted, measured)
