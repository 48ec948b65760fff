"""NEFTune (`train.neftune_noise_alpha`): noise on the embeddings while training only, transformers' own hook."""
import torch

from afinar.training import read_metrics
from tests.conftest import train_tiny_run


def _adapter(run):
    from safetensors.torch import load_file

    return load_file(str(run / "adapter_model.safetensors"))


def test_neftune_changes_training_but_not_validation(tmp_path, tiny_base):
    train = {"max_steps": 3, "eval_every": 3, "seed": 3}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    plain = train_tiny_run(tmp_path / "a", tiny_base, "plain", 24, train)
    noisy = train_tiny_run(tmp_path / "b", tiny_base, "noisy", 24, {**train, "neftune_noise_alpha": 5.0})
    first = [next(r["eval_loss"] for r in read_metrics(run) if r.get("step") == 0) for run in (plain, noisy)]
    assert first[0] == first[1]  # validation runs in eval mode: the hook adds nothing there
    a, b = _adapter(plain), _adapter(noisy)
    assert a.keys() == b.keys()
    assert any(not torch.allclose(a[k], b[k]) for k in a)  # training saw the noise


def test_neftune_noise_has_the_papers_scale(tiny_base):
    from transformers.trainer_utils import neftune_post_forward_hook

    from afinar.models import load_model

    model = load_model(str(tiny_base), dtype=torch.float32)
    embeddings = model.get_input_embeddings()
    embeddings.neftune_noise_alpha = 5.0
    embeddings.register_forward_hook(neftune_post_forward_hook)
    ids = torch.arange(10).unsqueeze(0)
    clean = torch.nn.functional.embedding(ids, embeddings.weight)
    embeddings.train()
    noise = embeddings(ids) - clean
    bound = 5.0 / (ids.shape[1] * clean.shape[-1]) ** 0.5  # alpha / sqrt(L·d), uniform in [-bound, bound]
    assert 0.5 * bound < noise.abs().max() <= bound + 1e-6
    embeddings.eval()
    assert torch.equal(embeddings(ids), clean)
