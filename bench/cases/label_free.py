"""Label-free recovery (issue 18): structured pruning fine-tuned only by distillation from
the original model on unlabelled images, against fine-tuning on the labels."""

from __future__ import annotations

from bench.harness import Section, table


def case_label_free(ctx) -> Section:
    """Structured 50% of the small CNN on animals; one-shot, then the same epochs of
    fine-tuning with labels, or on the same images without labels (the pass distills
    from the input model); recovery measured on the labelled test split."""
    import compress
    from bench.baselines import trained
    from compress import training

    sec = Section("Data: label-free fine-tuning recovers structured pruning", issue="#18")
    model, ds = trained("small-cnn", "animals", ctx)
    epochs = ctx.size(1, 5)
    common = {"structured": True, "sparsity": 0.5, "learning_rate": 1e-3,
              "seed": ctx.seed, "bn_recalibrate": False}  # fine-tuning alone recovers
    dense = training.accuracy(model, ds.x_test, ds.y_test)
    cut, _ = compress.prune(model, ds, epochs=0, **common)
    labelled, info_l = compress.prune(model, ds, epochs=epochs, **common)
    # The same training images, inputs only: no labels reach the pass.
    unlabelled, info_u = compress.prune(model, ds.x_train, epochs=epochs, **common)
    acc = {"dense": dense, "cut": training.accuracy(cut, ds.x_test, ds.y_test),
           "labels": training.accuracy(labelled, ds.x_test, ds.y_test),
           "no labels": training.accuracy(unlabelled, ds.x_test, ds.y_test)}
    gained_l, gained_u = acc["labels"] - acc["cut"], acc["no labels"] - acc["cut"]
    share = gained_u / gained_l if gained_l > 0 else float("nan")
    sec.add(f"Small CNN on animals ({len(ds.x_train)} training images), structured 50% of "
            f"the units of every prunable layer (magnitude, L2 norm), then {epochs} epochs "
            "of fine-tuning at 1e-3 with the labels, or on the same images without labels "
            "(the pass then distills from the input model). Parameters "
            f"{model.count_params():,} -> {cut.count_params():,}. Fine-tuning: "
            f"{info_l.get('task', '')} / {info_u.get('task', '')}.")
    sec.add(table(["model", "test accuracy", "recovered vs one-shot"], [
        ["dense", f"{acc['dense']:.2%}", ""],
        ["structured 50%, no fine-tuning", f"{acc['cut']:.2%}", ""],
        ["fine-tuned on labels", f"{acc['labels']:.2%}", f"{gained_l * 100:+.2f} pts"],
        ["fine-tuned without labels (distilled)", f"{acc['no labels']:.2%}",
         f"{gained_u * 100:+.2f} pts"]]))
    sec.target("label-free fine-tuning recovers >= 80% of what labelled fine-tuning recovers "
               "(structured 50%, small CNN, animals, same epochs)",
               f"{share:.0%} ({gained_u * 100:+.2f} vs {gained_l * 100:+.2f} pts)", ">= 80%",
               gained_l > 0 and gained_u >= 0.8 * gained_l)
    return sec


CASES = {"label-free": case_label_free}
