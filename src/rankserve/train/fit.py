"""Fine-tune a one-logit cross-encoder with sentence-transformers' CrossEncoder trainer.

Why that trainer: it is the maintained one for exactly this model type (on ``transformers``'
Trainer: checkpoints every ``save_steps``, resume, seeding, progress bars, all CPU threads), and
its losses cover the three choices offered here:

- ``bce``: pointwise, each (query, passage) a binary label (the positive 1, each hard negative 0);
- ``listwise``: the positive against its hard negatives and the other queries' passages in the
  batch (softmax cross-entropy, ``MultipleNegativesRankingLoss``);
- ``distill``: ``listwise`` with a soft target: the hard negatives' share of it is the dense
  embedder's own distribution over (positive, negatives), mixed with the label (``teacher_weight``
  of the mass from the embedder, the rest on the positive; the batch's other passages get none), so
  the cross-encoder learns the labels without unlearning the bi-encoder's order among near misses.
  (A ListNet loss over the hard negatives alone learned almost nothing in 38 steps: without the easy
  in-batch negatives the first steps have no simple signal to follow.)

The output folder is what ``CrossEncoder.save_pretrained`` writes (``BertForSequenceClassification``
safetensors, one label, the tokenizer), which ``rankserve serve --model`` and
``rankserve eval --reranker`` load as they are.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rankserve.train import LOSSES
from rankserve.train.mining import Example


@dataclass
class FitOptions:
    output: Path
    base: Path
    epochs: float = 1.0
    batch_size: int = 16
    learning_rate: float = 5e-5
    max_length: int = 256
    loss: str = "listwise"  # measured far better than bce on the man pages (docs/evaluation.md)
    teacher_weight: float = 0.5  # distill: the teacher's share of the target distribution
    teacher_scale: float = 20.0  # distill: cosine -> logit (the scale all-MiniLM-L6-v2 was trained at)
    negatives: int = 4  # per query (the listwise loss needs this many; queries with fewer are dropped)
    seed: int = 0
    warmup_ratio: float = 0.1
    save_steps: int = 500
    max_steps: int = -1  # > 0: stop after this many steps (tests, quick runs)
    resume: bool = False
    progress: bool = True

    def recorded(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items() if k != "progress"}


def rows(examples: list[Example], opts: FitOptions) -> dict[str, list]:
    """The training table the chosen loss reads (column order = the loss's inputs)."""
    if opts.loss == "bce":
        table: dict[str, list] = {"query": [], "passage": [], "label": []}
        for ex in examples:
            for passage, label in [(ex.positive, 1.0)] + [(n, 0.0) for n in ex.negatives[: opts.negatives]]:
                table["query"].append(ex.query)
                table["passage"].append(passage)
                table["label"].append(label)
        return table
    kept = [ex for ex in examples if len(ex.negatives) >= opts.negatives]
    table = {"query": [ex.query for ex in kept], "positive": [ex.positive for ex in kept]}
    for n in range(opts.negatives):
        table[f"negative_{n + 1}"] = [ex.negatives[n] for ex in kept]
    if opts.loss == "distill":
        table["label"] = [distill_target(ex.teacher[: opts.negatives + 1], opts) for ex in kept]
    return table


def distill_target(teacher: tuple[float, ...], opts: FitOptions) -> list[float]:
    """The target over (positive, negatives...): ``1 - teacher_weight`` on the positive plus
    ``teacher_weight`` times softmax(``teacher_scale`` x the teacher's cosines)."""
    import math

    if not teacher:
        raise ValueError("--loss distill needs the embedder's scores for every example (teacher_scores)")
    top = max(teacher)
    weights = [math.exp(opts.teacher_scale * (t - top)) for t in teacher]
    total = sum(weights)
    mix = [opts.teacher_weight * w / total for w in weights]
    mix[0] += 1.0 - opts.teacher_weight
    return mix


def distill_loss(model: Any, negatives: int) -> Any:
    """sentence-transformers' ``MultipleNegativesRankingLoss`` (same pairs, same scaled sigmoid) with
    the soft target of ``distill_target`` instead of all mass on the positive."""
    import torch
    from sentence_transformers.cross_encoder import losses

    class DistilledRankingLoss(losses.MultipleNegativesRankingLoss):
        def forward(self, inputs, labels, prompt=None, task=None):
            anchors = inputs[0]
            scores = [self.call_model_with_columns(anchors, inputs[1], prompt=prompt, task=task)]
            in_batch = list(self.get_in_batch_negatives(anchors, inputs[1:]))
            for column in in_batch + list(inputs[2:]):
                scores.append(self.call_model_with_columns(anchors, column, prompt=prompt, task=task))
            logits = torch.stack(scores, dim=1)
            if self.activation_fn is not None:  # MNRL's default: a sigmoid, then the scale
                logits = self.activation_fn(logits)
            logits = self.scale * logits
            target = torch.zeros_like(logits)
            if isinstance(labels, list | tuple):  # the trainer's collator passes list columns as lists
                labels = torch.stack([torch.as_tensor(row) for row in labels])
            labels = labels.to(logits)
            target[:, 0] = labels[:, 0]
            target[:, 1 + len(in_batch) :] = labels[:, 1:]
            return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()

    return DistilledRankingLoss(model, num_negatives=negatives)


def fit(examples: list[Example], opts: FitOptions) -> dict[str, Any]:
    """Train, save the model to ``opts.output``, and return what happened (for training.json)."""
    import torch
    import transformers
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
        losses,
    )

    if opts.loss not in LOSSES:
        raise ValueError(f"loss {opts.loss!r}: choose {', '.join(LOSSES)}")
    transformers.set_seed(opts.seed)
    model = CrossEncoder(str(opts.base), num_labels=1, max_length=opts.max_length, device="cpu")
    table = rows(examples, opts)
    if not table["query"]:
        raise ValueError("no training examples (queries need a positive, and listwise needs --negatives of them)")
    if opts.loss == "bce":
        loss: torch.nn.Module = losses.BinaryCrossEntropyLoss(model)
    elif opts.loss == "distill":
        loss = distill_loss(model, opts.negatives)
    else:
        loss = losses.MultipleNegativesRankingLoss(model, num_negatives=opts.negatives)
    checkpoints = opts.output / "checkpoints"
    args = CrossEncoderTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps,
        per_device_train_batch_size=opts.batch_size,
        learning_rate=opts.learning_rate,
        warmup_ratio=opts.warmup_ratio,
        seed=opts.seed,
        data_seed=opts.seed,
        save_strategy="steps",
        save_steps=opts.save_steps,
        save_total_limit=2,
        logging_steps=max(1, min(10, opts.save_steps)),
        report_to="none",
        use_cpu=True,
        disable_tqdm=not opts.progress,
        dataloader_num_workers=0,
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_dict(table), loss=loss)
    resume = opts.resume and checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - started
    model.save_pretrained(str(opts.output))
    history = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    per_row = 1 if opts.loss == "bce" else 1 + opts.negatives  # (query, passage) pairs scored per table row
    seen = trainer.state.global_step * opts.batch_size * per_row
    return {
        "rows": len(table["query"]),
        "pairs_per_epoch": len(table["query"]) * per_row,
        "steps": trainer.state.global_step,
        "seconds": round(seconds, 1),
        "pairs_per_second": round(seen / seconds, 2) if seconds else None,
        "loss_history": history,
        "threads": torch.get_num_threads(),
        "resumed": bool(resume),
    }
