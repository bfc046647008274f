//! Writes the CRD YAML of every fleetsnap kind into the crate's `generated/` folder and
//! into the Helm chart's `crds/` folder, replacing whatever was there, and refreshes the
//! generated field reference in docs/api.md.

use std::fs;
use std::path::{Path, PathBuf};

fn write_all(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let files = fleetsnap_crds::generated_files();
    // Stale files from renamed or removed kinds would keep being installed by the chart.
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".yaml") && !files.iter().any(|f| f.file_name == name) {
            fs::remove_file(&path)?;
        }
    }
    for f in &files {
        fs::write(dir.join(&f.file_name), &f.contents)?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let targets = [
        crate_dir.join("generated"),
        crate_dir.join("../charts/fleetsnap/crds"),
    ];
    for dir in &targets {
        write_all(dir)?;
        println!("wrote {}", dir.display());
    }
    let docs = crate_dir.join("../docs/api.md");
    let page = fs::read_to_string(&docs)?;
    let updated = fleetsnap_crds::splice_field_reference(&page).ok_or_else(|| {
        std::io::Error::other(format!(
            "{} lacks the generated-reference markers",
            docs.display()
        ))
    })?;
    fs::write(&docs, updated)?;
    println!("wrote {}", docs.display());
    Ok(())
}
