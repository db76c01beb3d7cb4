//! The DIM paper's tables as data: each table names its dataset, the paper's published numbers
//! (as the paper and the authors' blog post report them) and, for the rows this
//! toolkit can train, the `dim-train` settings of the official code.

use dim_models::Preset;

/// A dataset the tables are measured on, with the files a directory must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaperDataset {
    /// Name in messages.
    pub name: &'static str,
    /// `--format` dim-train reads.
    pub train_format: &'static str,
    /// `--format` dim-eval's probe reads (its labelled splits).
    pub probe_format: &'static str,
    /// Files the train and test splits are read from.
    pub required_files: &'static [&'static str],
    /// Images in the training split (for time estimates).
    pub train_images: usize,
    /// `--resize` that fits the images to the encoder's input.
    pub resize: &'static str,
}

/// CIFAR-10, binary version (`cifar-10-batches-bin`).
pub const CIFAR10: PaperDataset = PaperDataset {
    name: "CIFAR-10 (binary version)",
    train_format: "cifar10",
    probe_format: "cifar10",
    required_files: &[
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ],
    train_images: 50_000,
    resize: "pad",
};

/// CIFAR-100, binary version (`cifar-100-binary`), fine labels.
pub const CIFAR100: PaperDataset = PaperDataset {
    name: "CIFAR-100 (binary version)",
    train_format: "cifar100",
    probe_format: "cifar100",
    required_files: &["train.bin", "test.bin"],
    train_images: 50_000,
    resize: "pad",
};

/// STL-10, binary version (`stl10_binary`): 96×96 images, resized to the 64×64 the paper's
/// AlexNet-style encoder takes, as the official code's STL-10 command does. DIM trains on the
/// labelled train images plus the 100,000 unlabelled ones (the official data loader's
/// `train+unlabeled` split); the probe trains on the 5,000 labelled ones.
pub const STL10: PaperDataset = PaperDataset {
    name: "STL-10 (binary version)",
    train_format: "stl10-with-unlabelled",
    probe_format: "stl10",
    required_files: &["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"],
    train_images: 105_000,
    resize: "stretch",
};

/// How one of our rows is trained with `dim-train`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingRun {
    /// Directory name of the run under the output's `runs/`.
    pub key: &'static str,
    /// Encoder preset.
    pub preset: Preset,
    /// `--mode` (dim-l: α 0, β 1, γ 0.1).
    pub mode: &'static str,
    /// `--estimator`.
    pub estimator: &'static str,
    /// `--critic-width` U.
    pub critic_width: usize,
    /// Epochs of the full run.
    pub epochs: usize,
    /// Random horizontal flips.
    pub flip: bool,
}

impl TrainingRun {
    /// DIM(L) on `preset` with `estimator`, the official defaults otherwise: U 2048, 1000 epochs.
    const fn dim_l(key: &'static str, preset: Preset, estimator: &'static str) -> Self {
        TrainingRun { key, preset, mode: "dim-l", estimator, critic_width: 2048, epochs: 1000, flip: false }
    }
}

/// One row of a table: a model, the paper's number for it and, when we train it, how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// The model as the paper names it.
    pub model: &'static str,
    /// The paper's test accuracy in %, where it reports one.
    pub published: Option<f64>,
    /// Our run of it, where the toolkit trains it.
    pub ours: Option<TrainingRun>,
}

/// One of the paper's tables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperTable {
    /// Name on the command line and of the output directory.
    pub name: &'static str,
    /// Heading of the Markdown table.
    pub title: &'static str,
    /// Where the published numbers come from.
    pub source: &'static str,
    /// The dataset.
    pub dataset: PaperDataset,
    /// Rows in the paper's order.
    pub rows: &'static [Row],
}

const TABLE_1_SOURCE: &str = "Hjelm et al., ICLR 2019, Table 1 (nonlinear classifier on frozen features)";

const fn published(model: &'static str, accuracy: f64) -> Row {
    Row { model, published: Some(accuracy), ours: None }
}

const fn trained(model: &'static str, accuracy: f64, run: TrainingRun) -> Row {
    Row { model, published: Some(accuracy), ours: Some(run) }
}

/// Every table `cargo xtask paper` knows, in the order of its usage text.
pub const TABLES: &[PaperTable] = &[
    PaperTable {
        name: "cifar10",
        title: "CIFAR-10: DIM(L) against the paper (basic32x32 encoder)",
        source: TABLE_1_SOURCE,
        dataset: CIFAR10,
        rows: &[
            published("fully supervised", 75.39),
            published("VAE", 60.71),
            published("BiGAN", 62.57),
            trained("DIM(L) DV/KL", 72.66, TrainingRun::dim_l("dim-l-dv", Preset::Basic32x32, "dv")),
            trained("DIM(L) JSD", 73.25, TrainingRun::dim_l("dim-l-jsd", Preset::Basic32x32, "jsd")),
            trained("DIM(L) infoNCE", 75.21, TrainingRun::dim_l("dim-l-nce", Preset::Basic32x32, "nce")),
        ],
    },
    PaperTable {
        name: "cifar100",
        title: "CIFAR-100: DIM(L) against the paper (basic32x32 encoder)",
        source: TABLE_1_SOURCE,
        dataset: CIFAR100,
        rows: &[
            published("fully supervised", 42.27),
            published("VAE", 37.21),
            published("BiGAN", 37.59),
            trained("DIM(L) DV/KL", 48.52, TrainingRun::dim_l("dim-l-dv", Preset::Basic32x32, "dv")),
            trained("DIM(L) JSD", 48.13, TrainingRun::dim_l("dim-l-jsd", Preset::Basic32x32, "jsd")),
            trained("DIM(L) infoNCE", 49.74, TrainingRun::dim_l("dim-l-nce", Preset::Basic32x32, "nce")),
        ],
    },
    PaperTable {
        name: "stl10",
        title: "STL-10: DIM(L) against the paper (alex64x64 encoder on 64x64 inputs, flips)",
        source: TABLE_1_SOURCE,
        dataset: STL10,
        rows: &[
            published("fully supervised", 68.7),
            published("VAE", 58.27),
            published("BiGAN", 71.53),
            trained("DIM(L) DV/KL", 69.15, stl10_run("dim-l-dv", "dv")),
            trained("DIM(L) JSD", 72.86, stl10_run("dim-l-jsd", "jsd")),
            trained("DIM(L) infoNCE", 72.57, stl10_run("dim-l-nce", "nce")),
        ],
    },
    PaperTable {
        name: "resnet-cifar10",
        title: "CIFAR-10: DIM with a ResNet encoder and strided crops against CPC",
        source: "Hjelm et al., ICLR 2019, comparison with CPC (ResNet encoder, strided crops, \
                 single global vector, infoNCE with 1024 critic units), as the authors' Microsoft \
                 Research blog post reports it; no number is published for the ResNet without crops",
        dataset: CIFAR10,
        rows: &[
            published("CPC", 77.45),
            Row {
                model: "DIM infoNCE, ResNet (no crops)",
                published: None,
                ours: Some(nce_1024("resnet-nce", Preset::ResNet19_32x32)),
            },
            trained(
                "DIM infoNCE, ResNet + strided crops",
                80.95,
                nce_1024("foldresnet-nce", Preset::FoldResNet19_32x32),
            ),
        ],
    },
];

/// The official STL-10 run: 200 epochs with flips (the official README's STL-10 command).
const fn stl10_run(key: &'static str, estimator: &'static str) -> TrainingRun {
    TrainingRun { epochs: 200, flip: true, ..TrainingRun::dim_l(key, Preset::Alex64x64, estimator) }
}

/// The CPC comparison's local DIM: infoNCE with 1024 critic units (the official README's
/// folded-ResNet command).
const fn nce_1024(key: &'static str, preset: Preset) -> TrainingRun {
    TrainingRun { critic_width: 1024, ..TrainingRun::dim_l(key, preset, "nce") }
}

/// The table called `name`.
pub fn find(name: &str) -> Option<&'static PaperTable> {
    TABLES.iter().find(|table| table.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_trains_something_and_each_run_has_its_own_directory() {
        for table in TABLES {
            let keys: Vec<&str> = table.rows.iter().filter_map(|r| r.ours.map(|run| run.key)).collect();
            let mut unique = keys.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(keys.len(), unique.len(), "{}", table.name);
            assert!(!keys.is_empty(), "{} trains nothing", table.name);
        }
        assert_eq!(find("cifar10").unwrap().rows[4].ours.unwrap().epochs, 1000);
        assert!(find("stl10").unwrap().rows.iter().filter_map(|r| r.ours).all(|run| run.flip));
        assert!(find("imagenet").is_none());
    }
}
