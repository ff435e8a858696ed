"""The torch Adam step gives Thinc's own Adam update, setting by setting."""
import numpy
import pytest
import torch
from thinc.api import SGD, Adam, RAdam
from thinc.util import torch2xp, xp2torch

from spacy_rnn.layers.torch_shim import InPlacePyTorchShim
from spacy_rnn.optimization.torch_adam import thinc_adam_step


def _thinc_reference_step(optimizer, shim_id, module):
    # What Thinc's PyTorchShim.finish_update computes, parameter by parameter.
    for name, param in module.named_parameters():
        if param.grad is None:
            continue
        new, _ = optimizer((shim_id, name), torch2xp(param.data), torch2xp(param.grad))
        with torch.no_grad():
            param.copy_(xp2torch(new))
        param.grad.zero_()


def _module(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.LSTM(8, 6, batch_first=True))


def _set_grads(module, step):
    gen = torch.Generator().manual_seed(1000 + step)
    for param in module.parameters():
        # Gradients large enough that clipping engages on some steps.
        param.grad = torch.randn(param.shape, generator=gen) * (0.1 + step % 3)


def _scheduled_lr():
    value = 0.01
    while True:
        yield value
        value *= 0.9


@pytest.mark.parametrize(
    "settings",
    [
        dict(learn_rate=0.01, L2=0.0, grad_clip=0.0, use_averages=False),
        dict(learn_rate=0.01, L2=0.0, grad_clip=0.5, use_averages=False),
        dict(learn_rate=0.01, L2=0.01, L2_is_weight_decay=True, grad_clip=1.0, use_averages=True),
        dict(learn_rate=0.01, L2=0.01, L2_is_weight_decay=False, grad_clip=1.0, use_averages=False),
        dict(learn_rate=_scheduled_lr(), beta1=0.8, beta2=0.99, eps=1e-6, grad_clip=0.0),
    ],
)
def test_matches_thinc_adam(settings):
    ours_opt = Adam(**settings)
    if not isinstance(settings["learn_rate"], float):
        settings = dict(settings, learn_rate=_scheduled_lr())
    ref_opt = Adam(**settings)
    ours, ref = _module(0), _module(0)
    scratch = {}
    for step in range(12):
        _set_grads(ours, step)
        _set_grads(ref, step)
        params = [(n, p) for n, p in ours.named_parameters() if p.grad is not None]
        assert thinc_adam_step(ours_opt, 7, params, scratch)
        _thinc_reference_step(ref_opt, 7, ref)
        ours_opt.step_schedules()
        ref_opt.step_schedules()
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        numpy.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert ours_opt.nr_update == ref_opt.nr_update
    for key in ref_opt.mom1:
        numpy.testing.assert_allclose(ours_opt.mom2[key], ref_opt.mom2[key], rtol=1e-4, atol=1e-9)
    if ref_opt.averages is not None:
        for key in ref_opt.averages:
            numpy.testing.assert_allclose(ours_opt.averages[key], ref_opt.averages[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: SGD(0.1), lambda: RAdam(0.01)])
def test_other_optimizers_fall_back(make):
    module = _module(1)
    _set_grads(module, 0)
    before = [p.detach().clone() for p in module.parameters()]
    params = list(module.named_parameters())
    assert not thinc_adam_step(make(), 3, params, {})
    # Nothing was touched: the shim's generic path handles these.
    for a, b in zip(before, module.parameters()):
        assert torch.equal(a, b.detach())
    shim = InPlacePyTorchShim(module)
    shim.finish_update(make())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters()))
    # Gradients are cleared (set to None, as zero_grad does) after the step.
    assert all(p.grad is None for p in module.parameters())


def test_shim_keeps_storage_and_clears_grads():
    module = _module(2)
    shim = InPlacePyTorchShim(module)
    ptrs = [p.data_ptr() for p in module.parameters()]
    opt = Adam(0.01)
    for step in range(3):
        _set_grads(module, step)
        shim.finish_update(opt)
    assert [p.data_ptr() for p in module.parameters()] == ptrs
    # Gradients are cleared (set to None, as zero_grad does) after the step.
    assert all(p.grad is None for p in module.parameters())


def test_a_new_optimizer_gets_its_own_moments():
    # The torch views of the optimiser's moment arrays are cached between
    # steps; a fresh optimiser on the same shim (a resumed or restarted
    # run) must start from its own zero moments, not the cached views.
    settings = dict(learn_rate=0.01, grad_clip=1.0, use_averages=True)
    ours, ref = _module(3), _module(3)
    scratch = {}
    for phase in range(2):
        ours_opt, ref_opt = Adam(**settings), Adam(**settings)
        for step in range(4):
            _set_grads(ours, 10 * phase + step)
            _set_grads(ref, 10 * phase + step)
            params = [(n, p) for n, p in ours.named_parameters() if p.grad is not None]
            assert thinc_adam_step(ours_opt, 7, params, scratch)
            _thinc_reference_step(ref_opt, 7, ref)
        for key in ref_opt.mom1:
            numpy.testing.assert_allclose(ours_opt.mom1[key], ref_opt.mom1[key], rtol=1e-5, atol=1e-7)
            numpy.testing.assert_allclose(ours_opt.averages[key], ref_opt.averages[key], rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        numpy.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
