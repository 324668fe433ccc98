"""``cdcl adapt``: make an unseen dataset a branch of its own, without labels.

An unseen dataset (``data.<NEW>.branch: <trained>``) is served by a trained
branch. Adapting it takes four steps, each a plain function here:

1. choose the source branch (:func:`score_branches`): on NEW's unlabelled
   scans, for every trained branch, the distance between each BatchNorm
   layer's batch statistics on NEW and the branch's running statistics
   (:func:`bn_distance`, a symmetric KL between per-channel Gaussians, mean
   over channels, summed over layers) and the mean prediction entropy
   (:func:`mean_entropy`, divided by ``log K`` so heads of different class
   counts compare); ``auto`` picks the smallest distance;
2. copy that branch (BN layers and head) under the new name NEW in every
   dataset-specific wrapper (:func:`add_branch`);
3. ``precise-bn``: recompute the new branch's BN statistics on NEW (true
   averages, :func:`common.precise_bn.update_bn_stats`);
4. ``tent`` (optional): entropy minimisation over the new branch's BN affine
   parameters (:func:`tent`), from the precise-BN statistics.

The checkpoint written holds the new branch's weights, ``num_classes[NEW]``
and ``adapted: {NEW: {"from": source, "method": ...}}``.
:func:`common.evaluation.load_model_for_eval` reads that record: a config
that still declares ``data.NEW.branch`` (the one adapted with) or one that
declares NEW as a trained dataset both load it, and NEW is then routed to its
own branch. Source branches are copied, never written.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .dataset_specific import collapse, dataset_names, dataset_specific_modules
from .progress import track

logger = logging.getLogger(__name__)

#: TENT defaults (Wang et al., ICLR 2021: SGD, lr 1e-3, momentum 0.9, BN affine only)
TENT_STEPS = 200
TENT_LR = 1e-3
TENT_MOMENTUM = 0.9

_BN = nn.modules.batchnorm._BatchNorm


class MappedHead(nn.Module):
    """A source classifier read in another label space: the logit of target
    class ``j`` is the log-sum-exp of the source logits of the classes
    ``table`` maps to ``j`` (its probability is theirs summed). A target class
    no source class reaches gets a very low logit (never predicted); source
    classes outside the table are dropped."""

    UNREACHED = -1e4

    def __init__(self, head: nn.Module, table: Dict[int, int], num_classes: int) -> None:
        super().__init__()
        self.head = head
        self.num_classes = int(num_classes)
        self.table = {int(k): int(v) for k, v in table.items()}
        self.groups = [sorted(i for i, t in self.table.items() if t == j) for j in range(self.num_classes)]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, table={self.table}"

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        src = self.head(x, *args, **kwargs)  # (B, K_source, ...)
        cols = [torch.logsumexp(src[:, g], dim=1) if g else torch.full_like(src[:, 0], self.UNREACHED)
                for g in self.groups]
        return torch.stack(cols, dim=1)  # (B, K, ...)


class MappedOutput(nn.Module):
    """``model`` with its logits read through a label map (as :class:`MappedHead`
    reads a head's): an unseen dataset of other classes evaluated through a
    trained branch before ``cdcl adapt`` gave it a head of its own."""

    def __init__(self, model: nn.Module, table: Dict[int, int], num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.map = MappedHead(nn.Identity(), table, num_classes)

    def forward(self, *args: Any, **kwargs: Any):
        out = self.model(*args, **kwargs)
        if isinstance(out, dict):
            return {k: (self.map(v) if k == "out" else v) for k, v in out.items()}
        return self.map(out)


def mapped_for_eval(model: nn.Module, name: str, label_map_from: Optional[Dict[str, Dict[int, int]]],
                    num_classes: int) -> Tuple[nn.Module, Optional[List[int]]]:
    """The model that scores dataset ``name`` and the classes it can reach
    (None: all): ``model`` itself unless ``name`` is served through another
    branch whose classes ``label_map_from`` maps onto its own."""
    from .dataset_specific import branch_name

    reach = reachable_classes(model, name)
    served = branch_name(model, name)
    if reach is not None or not label_map_from or served == name or served not in label_map_from:
        return model, reach
    wrapped = MappedOutput(model, label_map_from[served], num_classes)
    return wrapped, [j for j, g in enumerate(wrapped.map.groups) if g]


def reachable_classes(model: nn.Module, name: str) -> Optional[List[int]]:
    """The classes of ``name`` its head can predict when the head maps another
    label space (:class:`MappedHead`, or a :class:`MappedOutput` around the
    network); None: every class."""
    if isinstance(model, MappedOutput):
        return [j for j, g in enumerate(model.map.groups) if g]
    for _, m in dataset_specific_modules(model):
        b = m.branches[name] if name in m.branches else None  # an alias serves its branch's classes
        if isinstance(b, MappedHead):
            return [j for j, g in enumerate(b.groups) if g]
    return None


def check_label_map(table: Dict[int, int], source: str, source_classes: int, new: str,
                    new_classes: int) -> None:
    """Every id of ``table`` is a class of its side; raise ``ConfigError`` naming the others."""
    from .config import ConfigError

    bad_src = sorted(k for k in table if not 0 <= int(k) < source_classes)
    bad_new = sorted(v for v in table.values() if not 0 <= int(v) < new_classes)
    if bad_src or bad_new:
        parts = ([f"{source} has no class id(s) {bad_src} (0..{source_classes - 1})"] if bad_src else []) + \
                ([f"{new} has no class id(s) {bad_new} (0..{new_classes - 1})"] if bad_new else [])
        raise ConfigError(f"'data.{new}.label_map_from.{source}': unknown classes: {'; '.join(parts)}")


def add_branch(model: nn.Module, new: str, source: str, label_map: Optional[Dict[int, int]] = None,
               num_classes: Optional[int] = None) -> nn.Module:
    """Give ``model`` a branch ``new`` in every dataset-specific wrapper (norms
    and heads): a deep copy of branch ``source``; with ``label_map`` (source id
    -> id of ``new``, ``num_classes`` of ``new``) each head is wrapped in a
    :class:`MappedHead`. ``new`` then routes to its own branch (an alias of
    that name is dropped). Returns the model (changed in place)."""
    names = dataset_names(model)
    if source not in names:
        raise KeyError(f"unknown branch {source!r}; this model knows {names}")
    if new in names:
        raise KeyError(f"the model already has a branch {new!r}")
    for _, m in dataset_specific_modules(model):
        branch = copy.deepcopy(m.branches[source])
        if label_map is not None and m.split_output:  # a classifier head
            branch = MappedHead(branch, label_map, int(num_classes))
        m.branches[new] = branch
        m.aliases = {a: b for a, b in m.aliases.items() if a != new}
    return model


def _logits(out: Any) -> torch.Tensor:
    return out["out"] if isinstance(out, dict) else out


def _entropy(logits: torch.Tensor, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of per-element prediction entropies / log K (empty
    range-image pixels, ``batch["mask"] == 0``, left out)."""
    logp = torch.log_softmax(logits.float(), dim=1)
    ent = -(logp.exp() * logp).sum(1) / math.log(max(logits.shape[1], 2))  # (B, ...)
    mask = batch.get("mask") if isinstance(batch, dict) else None
    if isinstance(mask, torch.Tensor) and mask.shape == ent.shape:
        w = (mask > 0).to(ent.dtype)
        return (ent * w).sum(), w.sum()
    return ent.sum(), torch.tensor(float(ent.numel()))


@torch.no_grad()
def branch_scores(plain: nn.Module, batches: Iterable, forward: Callable[[nn.Module, Any], Any]) -> Dict[str, float]:
    """One pass of ``plain`` (a collapsed branch, eval mode) over ``batches``:
    ``bn_distance`` (each BN layer's batch statistics of its input over the
    whole set against its running statistics: symmetric KL between the
    per-channel Gaussians, mean over channels, summed over layers) and
    ``entropy`` (mean prediction entropy / log K)."""
    plain.eval()
    bns = [m for m in plain.modules() if isinstance(m, _BN)]
    sums: Dict[int, List[torch.Tensor]] = {}

    def hook(i):
        def f(mod, inputs, output):
            x = inputs[0].detach().double()
            x = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N)
            s = sums.setdefault(i, [torch.zeros_like(x[:, 0]), torch.zeros_like(x[:, 0]), 0])
            s[0] += x.sum(1)
            s[1] += (x * x).sum(1)
            s[2] += x.shape[1]
        return f

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(bns)]
    ent_sum, ent_n = 0.0, 0.0
    try:
        for batch in batches:
            e, n = _entropy(_logits(forward(plain, batch)), batch)
            ent_sum, ent_n = ent_sum + float(e), ent_n + float(n)
    finally:
        for h in handles:
            h.remove()
    distance = 0.0
    for i, m in enumerate(bns):
        if i not in sums or m.running_mean is None:
            continue
        s1, s2, n = sums[i]
        mu1 = s1 / n
        v1 = (s2 / n - mu1 * mu1).clamp_min(0) + m.eps
        mu2, v2 = m.running_mean.double(), m.running_var.double() + m.eps
        kl = 0.5 * (v1 / v2 + v2 / v1 + (mu1 - mu2) ** 2 * (1 / v1 + 1 / v2)) - 1.0
        distance += float(kl.mean())
    return {"bn_distance": distance, "entropy": ent_sum / max(ent_n, 1.0)}


def score_branches(model: nn.Module, make_batches: Callable[[], Iterable],
                   forward: Callable[[nn.Module, Any], Any],
                   branches: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    """:func:`branch_scores` of every trained branch (``branches``: those only)
    on the batches ``make_batches()`` yields (called once per branch)."""
    return {b: branch_scores(collapse(model, b), make_batches(), forward)
            for b in (branches or dataset_names(model))}


def pick_branch(scores: Dict[str, Dict[str, float]]) -> str:
    """The branch with the smallest BN-statistics distance."""
    return min(scores, key=lambda b: scores[b]["bn_distance"])


def format_scores(scores: Dict[str, Dict[str, float]], chosen: str, candidates: Optional[List[str]] = None) -> str:
    """The table ``cdcl adapt`` prints: both measures per branch, the choice,
    and which branch the entropy would have chosen (``candidates``: the
    branches that can serve the dataset's classes; the others are marked)."""
    candidates = [b for b in (candidates or list(scores)) if b in scores]
    lines = [f"{'branch':<16} {'BN distance':>12} {'entropy':>8}"]
    for b, s in scores.items():
        note = "  <- chosen" if b == chosen else ("" if b in candidates else "  (other classes, no label map)")
        lines.append(f"{b:<16} {s['bn_distance']:>12.4f} {s['entropy']:>8.4f}{note}")
    if len(candidates) > 1:
        by_entropy = min(candidates, key=lambda b: scores[b]["entropy"])
        lines.append(f"(the BN distance picks {pick_branch({b: scores[b] for b in candidates})!r}; "
                     f"the entropy would pick {by_entropy!r})")
    return "\n".join(lines)


def tent(plain: nn.Module, batches: Iterable, forward: Callable[[nn.Module, Any], Any],
         steps: int = TENT_STEPS, lr: float = TENT_LR, momentum: float = TENT_MOMENTUM) -> List[float]:
    """TENT on a plain network: minimise the mean prediction entropy over the
    BN affine parameters only, for ``steps`` batches of ``batches`` (cycled).

    As in the paper, the forward normalises with the batch's statistics; the
    running statistics (from precise BN) are kept (momentum 0) and used at
    evaluation. Every other parameter is frozen. Returns the entropy per step."""
    bns = [m for m in plain.modules() if isinstance(m, _BN)]
    params = [p for m in bns for p in (m.weight, m.bias) if p is not None]
    if not params:
        raise ValueError("TENT needs BatchNorm layers with affine parameters")
    grads = {p: p.requires_grad for p in plain.parameters()}
    for p in plain.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    plain.eval()
    for m in bns:
        m.train()
        m.momentum = 0.0  # batch statistics in the forward, running ones untouched
    losses: List[float] = []
    try:
        while len(losses) < steps:
            seen = False
            for batch in batches():
                seen = True
                e, n = _entropy(_logits(forward(plain, batch)), batch)
                loss = e / n.clamp_min(1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if len(losses) >= steps:
                    break
            if not seen:
                raise ValueError("TENT got no batches")
    finally:
        for m, (mom, tracked) in zip(bns, saved):
            m.momentum = mom
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        for p, g in grads.items():
            p.requires_grad_(g)
        plain.eval()
    return losses


def copy_into_branch(model: nn.Module, plain: nn.Module, branch: str, shared: bool = False) -> None:
    """Load a collapsed network's weights back into ``branch`` of ``model``:
    only that branch's entries change; with ``shared`` the entries outside
    dataset-specific wrappers (a shared BatchNorm) are written too."""
    state = model.state_dict()
    wrappers = {p for p, _ in dataset_specific_modules(model)}
    for k, v in plain.state_dict().items():
        parts = k.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in wrappers:
                state[".".join(parts[:cut] + ["branches", branch] + parts[cut:])] = v.clone()
                break
        else:
            if shared and k in state:
                state[k] = v.clone()
    model.load_state_dict(state)


# -- the steps shared by `cdcl adapt`, `cdcl precise-bn` and the study's unseen domains ------

#: the adaptations: ``precise-bn`` (BN statistics re-estimated), ``tent`` (then TENT)
METHODS = ("precise-bn", "tent")


def candidate_branches(model: nn.Module, names: List[str], heads: Dict[str, int],
                       maps: Dict[str, Dict[int, int]], k_new: int) -> Tuple[List[str], Dict[str, str]]:
    """The trained branches that can serve a dataset of ``k_new`` classes (a head
    of ``k_new`` classes, or one ``maps`` maps onto them), and why each other
    one cannot. A model without dataset-specific modules (one head in the
    first dataset's classes, as label remapping trains) has one branch."""
    own = [b for b in dataset_names(model) if b in names] or list(names[:1])
    fits, others = [], {}
    for b in own:
        k = int(heads.get(b, k_new))
        if b in maps or k == k_new:
            fits.append(b)
        else:
            others[b] = f"{k} classes, no label map"
    return fits, others


def unlabelled_batches(ds, batch_size: int, collate: Callable, seed: int, limit: int,
                       device: Optional[torch.device] = None, desc: str = "") -> Callable[[], Iterable]:
    """A function returning, at each call, the same first ``limit`` batches of
    ``ds`` (seeded shuffle, equal input sizes only: :func:`equal_size_batches`),
    on ``device``: what branch scores, precise BN and TENT read (labels unused)."""
    from .precise_bn import equal_size_batches
    from .utils import to_device

    def batches():
        it = equal_size_batches(ds, batch_size, collate, shuffle=True,
                                generator=torch.Generator().manual_seed(seed))
        total = min(limit, math.ceil(len(ds) / batch_size))
        for i, b in enumerate(track(it, desc=desc, total=total) if desc else it):
            if i >= limit:
                break
            yield to_device(b, device) if device is not None else b
    return batches


def adapt_network(net: nn.Module, make_batches: Callable[[], Iterable], forward: Callable[[nn.Module, Any], Any],
                  method: str = "precise-bn", num_batches: int = 200, steps: int = TENT_STEPS,
                  lr: float = TENT_LR) -> Dict[str, Any]:
    """Adapt a plain network in place: precise BN (its BN statistics
    recomputed as true averages over ``num_batches`` batches), then with
    ``method="tent"`` ``steps`` TENT steps. Returns ``{"method", "batches"}``
    and for TENT ``{"steps", "entropy": [first, last]}``."""
    from .precise_bn import update_bn_stats

    if method not in METHODS:
        raise ValueError(f"unknown adaptation {method!r}; choose from {list(METHODS)}")
    info: Dict[str, Any] = {"method": method, "batches": update_bn_stats(net, make_batches(), forward, num_batches)}
    if method == "tent":
        losses = tent(net, make_batches, forward, steps=steps, lr=lr, momentum=TENT_MOMENTUM)
        info.update(steps=len(losses), entropy=[losses[0], losses[-1]])
    return info


def describe(info: Dict[str, Any]) -> str:
    """``precise BN on 12 batches, TENT 200 steps (entropy 0.41 -> 0.30)``."""
    msg = f"precise BN on {info['batches']} batches"
    if info.get("method") == "tent":
        first, last = info["entropy"]
        msg += f", TENT {info['steps']} steps (entropy {first:.4f} -> {last:.4f})"
    return msg


def _check_args(args, cfg) -> bool:
    """The command line against the config (before any work); fills in
    ``args.branch``. Returns whether ``args.dataset`` is trained (precise BN of
    its own branch, in place) rather than unseen."""
    from .config import ConfigError

    new = args.dataset
    in_place = new in cfg.names
    if new not in cfg.data:
        raise ConfigError(f"--dataset {new!r}: the config {cfg.source} has {cfg.eval_names}")
    if in_place and not getattr(args, "trained_in_place", False):
        raise ConfigError(f"--dataset {new!r} is trained in {cfg.source}: adapt an unseen dataset "
                          f"(one declared with 'data.{new}.branch'); unseen: "
                          f"{[n for n in cfg.eval_names if n not in cfg.names]}")
    if args.branch is None:  # cdcl precise-bn: the branch that serves the dataset
        args.branch = new if in_place else cfg.data[new].branch
    if in_place and args.branch != new:
        raise ConfigError(f"--branch {args.branch!r}: {new!r} is trained in {cfg.source}, so its own "
                          f"branch is the one recomputed (leave --branch out)")
    if args.branch != "auto" and args.branch not in cfg.names:
        raise ConfigError(f"--branch {args.branch!r}: 'auto' or a trained dataset of {cfg.source}: {cfg.names}")
    if args.batches < 1 or (args.method == "tent" and args.steps < 1):
        raise ConfigError(f"--batches ({args.batches}) and --steps ({args.steps}) must be >= 1")
    return in_place


def _record_branch(ck: Dict[str, Any], model: nn.Module, cfg, new: str, source: str,
                   table: Optional[Mapping[int, int]], k_new: int, heads: Dict[str, int],
                   how: Dict[str, Any]) -> None:
    """Put the model with its new branch into checkpoint ``ck``, with the head
    sizes, the record ``adapted[new]`` and the config adapted with (it declares
    NEW and its table: cdcl export/predict without --config read it)."""
    import yaml

    num_classes = dict(heads)
    head_k = num_classes.get(source)
    if head_k is not None:
        num_classes[new] = k_new if table is not None else head_k
    adapted = dict(ck.get("adapted") or {})
    adapted[new] = {"from": source, "method": how["method"], "batches": how["batches"],
                    "label_map": None if table is None else {int(k): int(v) for k, v in table.items()},
                    "classes": k_new, "steps": how["steps"], "scores": how["scores"]}
    ck.update(model={k: v.cpu() for k, v in model.state_dict().items()}, num_classes=num_classes,
              adapted=adapted, config=yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def adapt_from_args(args) -> int:
    """``cdcl adapt CONFIG --checkpoint C --dataset NEW [--branch auto|B]
    [--method precise-bn|tent] [--steps N] [--batches N] --out NEW.pth``.

    ``cdcl precise-bn`` is this command with ``--method precise-bn`` and
    ``--branch`` defaulting to the branch that serves NEW (``data.NEW.branch``);
    it also takes a trained dataset (``args.trained_in_place``): that
    dataset's own branch gets its statistics recomputed in place."""
    from .build import build_dataset, get_task, num_classes_of
    from .checkpoint import load_checkpoint, save_checkpoint
    from .config import ConfigError, load_config
    from .dist import select_device
    from .evaluation import load_model_for_eval
    from .utils import check_writable

    cfg = load_config(args.config, args.overrides)
    new = args.dataset
    in_place = _check_args(args, cfg)
    check_writable(args.out, "--out")
    task = get_task(cfg)
    device = select_device(cfg.train.device)
    model = load_model_for_eval(cfg, args.checkpoint, device, task)
    if not in_place and not any(isinstance(next(iter(m.branches.values())), _BN)
                                for _, m in dataset_specific_modules(model)):
        raise ConfigError(f"{cfg.source}: strategy {cfg.strategy.name!r} has no dataset-specific BatchNorm "
                          "to adapt (cdcl, conv_not_shared have)")
    if not in_place and new in dataset_names(model):
        raise ConfigError(f"--dataset {new!r}: {args.checkpoint} already has a branch {new!r} "
                          "(adapt the checkpoint it came from)")
    entry = cfg.data[new]
    ds = build_dataset(cfg, new, entry.train_split, False, task)
    if len(ds) == 0:
        raise ConfigError(f"data.{new}: split {entry.train_split!r} has no scans to adapt on")
    batches = unlabelled_batches(ds, entry.batch_size, task.collate_fn(new, entry.as_dict()), cfg.train.seed,
                                 args.batches, device, desc=f"adapt {new}")
    ck = load_checkpoint(args.checkpoint)
    for k in ("optimizer", "scheduler", "scaler"):  # not a training state any more
        ck.pop(k, None)
    if in_place:
        plain = collapse(model, new)
        info = adapt_network(plain, batches, task.forward, args.method, args.batches, args.steps, args.lr)
        copy_into_branch(model, plain, new, shared=True)
        ck["model"] = {k: v.cpu() for k, v in model.state_dict().items()}
        save_checkpoint(ck, args.out)
        print(f"branch {new!r} adapted in place on its own split {entry.train_split!r} ({describe(info)}) "
              f"-> {args.out}")
        return 0

    # NEW's predictions are read in the source head's classes: only a head
    # with NEW's class count can serve it, or one that data.NEW.label_map_from
    # maps onto NEW's classes
    heads = dict(ck.get("num_classes") or {})
    k_new = num_classes_of(ds)
    maps = entry.label_map_from or {}
    for b, table in maps.items():
        check_label_map(table, b, int(heads.get(b, k_new)), new, k_new)
    fits, _ = candidate_branches(model, cfg.names, heads, maps, k_new)
    if args.branch != "auto" and args.branch not in fits:
        raise ConfigError(f"--branch {args.branch!r}: its head has {heads.get(args.branch)} classes, "
                          f"{new} has {k_new} (map them with 'data.{new}.label_map_from.{args.branch}')")
    if not fits:
        raise ConfigError(f"no trained branch has {new}'s {k_new} classes (heads: {heads}); map one "
                          f"with 'data.{new}.label_map_from'")
    scores = score_branches(model, batches, task.forward,
                            cfg.names if args.branch == "auto" else [args.branch])
    source = pick_branch({b: scores[b] for b in fits}) if args.branch == "auto" else args.branch
    print(format_scores(scores, source, fits))
    table = maps.get(source)
    add_branch(model, new, source, table, k_new)
    plain = collapse(model, new)
    info = adapt_network(plain, batches, task.forward, args.method, args.batches, args.steps, args.lr)
    copy_into_branch(model, plain, new)
    _record_branch(ck, model, cfg, new, source, table, k_new, heads,
                   {"method": args.method, "batches": info["batches"], "steps": info.get("steps", 0),
                    "scores": scores})
    save_checkpoint(ck, args.out)
    print(f"branch {new!r} = branch {source!r} adapted on {new} ({describe(info)}) -> {args.out}")
    return 0
