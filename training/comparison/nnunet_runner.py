"""nnU-Net v2's own steps, run in nnU-Net's environment by ``training/comparison/nnunet.py`` (never imports
this project; nnUNet_raw / nnUNet_preprocessed / nnUNet_results come from the environment).

    python training/comparison/nnunet_runner.py plan    --dataset Dataset501_X --configuration 2d
    python training/comparison/nnunet_runner.py train   --dataset Dataset501_X --configuration 2d --budget-min 10 --report t.json
    python training/comparison/nnunet_runner.py predict --dataset Dataset501_X --configuration 2d --input DIR --output DIR --report p.json
    python training/comparison/nnunet_runner.py init    --dataset Dataset501_X --configuration 3d_fullres --report i.json

``init`` plans (fingerprint + experiment planning, no preprocessing) and files a model with nnU-Net's
own network for that plan and random weights, for timing its predictor (``benchmarks/bench_nnunet.py``):
speed does not depend on the weights.

``train`` is nnU-Net's default trainer (its network, loss, augmentation, poly learning-rate schedule,
deep supervision, foreground oversampling) with one change: it stops on a wall-clock budget instead
of after 1000 epochs of 250 iterations. Epochs are shortened to 50 iterations so it can stop close
to the budget, and once the first epoch is timed the poly schedule is stretched over the epochs
that fit, so the learning rate decays as it would over a full run.
"""

from __future__ import annotations

import sys
import types

# nnunetv2 2.8 pulls in timm -> torchvision through its Primus trainers; the torchvision wheel pip
# installs beside the CPU torch is a CUDA build that cannot import. The default U-Net never uses
# Primus, so that one module is replaced by an empty one before nnunetv2 looks for trainers.
sys.modules.setdefault("nnunetv2.training.nnUNetTrainer.primus.primus_trainers", types.ModuleType("primus_disabled"))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ITERATIONS_PER_EPOCH = 50
VAL_ITERATIONS_PER_EPOCH = 5


def _folders(dataset: str) -> tuple[Path, Path, Path]:
    return (Path(os.environ["nnUNet_raw"]) / dataset, Path(os.environ["nnUNet_preprocessed"]) / dataset,
            Path(os.environ["nnUNet_results"]) / dataset)


def plan(args) -> None:
    raw, pre, _ = _folders(args.dataset)
    dataset_id = args.dataset[len("Dataset"):len("Dataset") + 3]
    if not (pre / "nnUNetPlans.json").is_file() or not any(pre.glob(f"nnUNetPlans_{args.configuration}")):
        exe = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
        # planning sets torch's thread count from nnUNet_n_proc_DA, which must then be positive
        env = dict(os.environ, nnUNet_n_proc_DA=str(max(1, args.threads)))
        subprocess.run([str(exe), "-d", dataset_id, "-c", args.configuration, "-np", "1", "-npfp", "1",
                        "--verify_dataset_integrity"], check=True, env=env)
    # our split: the project's training patients train, its validation patients validate
    split = json.loads((raw / "split.json").read_text())
    (pre / "splits_final.json").write_text(json.dumps([split], indent=1))


def _trainer_class():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class BudgetTrainer(nnUNetTrainer):
        """nnU-Net's default trainer, stopped by a wall-clock budget (see the module docstring)."""

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cpu")):
            # nnU-Net records these argument names to rebuild the trainer; keep them as they are
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = ITERATIONS_PER_EPOCH
            self.num_val_iterations_per_epoch = VAL_ITERATIONS_PER_EPOCH

        def train_within(self, budget_s: float) -> dict:
            t0 = time.monotonic()
            self.on_train_start()
            iterations, stop, epoch_s = 0, "max_epochs", None
            for _ in range(self.current_epoch, self.num_epochs):
                t_epoch = time.monotonic()
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs, step_s = [], 0.0
                for _ in range(self.num_iterations_per_epoch):
                    t_step = time.monotonic()
                    outputs.append(self.train_step(next(self.dataloader_train)))
                    iterations += 1
                    step_s = time.monotonic() - t_step
                    # stop before a step that would end past the budget, keeping time to validate
                    if time.monotonic() - t0 + 1.5 * step_s > budget_s:
                        break
                self.on_train_epoch_end(outputs)
                out_of_time = time.monotonic() - t0 + step_s > budget_s
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    # nnU-Net's per-epoch validation only logs a pseudo Dice (the final checkpoint is
                    # used either way); past the budget one batch of it is enough
                    n_val = 1 if out_of_time else self.num_val_iterations_per_epoch
                    val = [self.validation_step(next(self.dataloader_val)) for _ in range(n_val)]
                    self.on_validation_epoch_end(val)
                self.on_epoch_end()
                if epoch_s is None:
                    epoch_s = time.monotonic() - t_epoch
                    fit = max(self.current_epoch, int(budget_s // max(epoch_s, 1e-3)))
                    self.num_epochs = min(self.num_epochs, fit)
                    self.lr_scheduler.max_steps = self.num_epochs
                if time.monotonic() - t0 + 0.5 * epoch_s > budget_s:
                    stop = "time_budget"
                    break
            self.on_train_end()
            return {"seconds": round(time.monotonic() - t0, 1), "epochs": int(self.current_epoch),
                    "iterations": iterations, "stop_reason": stop, "batch_size": int(self.batch_size),
                    "slices_seen": iterations * int(self.batch_size),
                    "patch_size": list(self.configuration_manager.patch_size),
                    "params": sum(p.numel() for p in self.network.parameters()),
                    "output_folder": self.output_folder}

    return BudgetTrainer


def train(args) -> None:
    from batchgenerators.utilities.file_and_folder_operations import load_json

    torch.set_num_threads(args.threads)
    _, pre, _ = _folders(args.dataset)
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False  # the trainer's __init__ pops this key
    trainer = _trainer_class()(plans, args.configuration, 0, load_json(str(pre / "dataset.json")),
                               torch.device(args.device))
    report = trainer.train_within(args.budget_min * 60)
    final = Path(report["output_folder"]) / "checkpoint_final.pth"
    # The predictor rebuilds the trainer by the name in the checkpoint and searches nnU-Net's own
    # package for it; BudgetTrainer lives here, and its network is nnUNetTrainer's, so the model is
    # filed as nnUNetTrainer's.
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    ckpt["trainer_name"] = "nnUNetTrainer"
    model_dir = Path(report["output_folder"]).parent.parent / f"nnUNetTrainer__nnUNetPlans__{args.configuration}"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(Path(report["output_folder"]).parent, model_dir)
    torch.save(ckpt, model_dir / "fold_0" / "checkpoint_final.pth")
    report["model_dir"] = str(model_dir)
    Path(args.report).write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


def init(args) -> None:
    from batchgenerators.utilities.file_and_folder_operations import load_json

    raw, pre, results = _folders(args.dataset)
    dataset_id = args.dataset[len("Dataset"):len("Dataset") + 3]
    if not (pre / "nnUNetPlans.json").is_file():
        bin_dir = Path(sys.executable).parent
        env = dict(os.environ, nnUNet_n_proc_DA=str(max(1, args.threads)))
        subprocess.run([str(bin_dir / "nnUNetv2_extract_fingerprint"), "-d", dataset_id, "-np", "1"], check=True, env=env)
        subprocess.run([str(bin_dir / "nnUNetv2_plan_experiment"), "-d", dataset_id], check=True, env=env)
    plans, dataset_json = load_json(str(pre / "nnUNetPlans.json")), load_json(str(raw / "dataset.json"))
    plans["continue_training"] = False  # the trainer's __init__ pops this key
    torch.manual_seed(0)
    trainer = _trainer_class()(plans, args.configuration, 0, dataset_json, torch.device("cpu"))
    # the network as trainer.initialize() builds it (which would also want the preprocessed data)
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    channels = determine_num_input_channels(trainer.plans_manager, trainer.configuration_manager, dataset_json)
    network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, channels,
                                                 trainer.label_manager.num_segmentation_heads, False)
    model_dir = results / f"nnUNetTrainer__nnUNetPlans__{args.configuration}"
    (model_dir / "fold_0").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pre / "nnUNetPlans.json", model_dir / "plans.json")
    shutil.copyfile(raw / "dataset.json", model_dir / "dataset.json")
    dims = len(trainer.configuration_manager.patch_size)
    torch.save({"network_weights": network.state_dict(), "init_args": {"configuration": args.configuration},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": tuple(range(dims))},
               model_dir / "fold_0" / "checkpoint_final.pth")
    config = plans["configurations"][args.configuration]
    report = {"configuration": args.configuration, "model_dir": str(model_dir),
              "patch_size": config.get("patch_size"), "spacing": config.get("spacing"),
              "parameters": sum(p.numel() for p in network.parameters())}
    Path(args.report).write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


def predict(args) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(args.threads)
    _, _, results = _folders(args.dataset)
    model_dir = results / f"nnUNetTrainer__nnUNetPlans__{args.configuration}"
    t0 = time.monotonic()
    # mirroring test-time augmentation off unless asked for (nnU-Net's default is on): our networks run without TTA
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=args.tta,
                                perform_everything_on_device=False, device=torch.device(args.device),
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    t1 = time.monotonic()
    predictor.predict_from_files_sequential(args.input, args.output, save_probabilities=False, overwrite=True,
                                            folder_with_segs_from_prev_stage=None)
    report = {"seconds": round(time.monotonic() - t1, 1), "load_seconds": round(t1 - t0, 1), "tta": args.tta}
    Path(args.report).write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("plan", "train", "predict", "init"))
    p.add_argument("--dataset", required=True)
    p.add_argument("--configuration", default="2d")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget-min", type=float)
    p.add_argument("--input")
    p.add_argument("--output")
    p.add_argument("--report")
    p.add_argument("--tta", action="store_true", help="predict: nnU-Net's mirroring test-time augmentation (its default)")
    args = p.parse_args()
    {"plan": plan, "train": train, "predict": predict, "init": init}[args.step](args)


if __name__ == "__main__":  # required: nnU-Net's validation pool re-imports this file in its workers
    main()
