import subprocess
import sys
from pathlib import Path

import ttsf_core


def test_ttsf_core_never_imports_prefect():
    modules = sorted(
        "ttsf_core." + ".".join(path.relative_to(Path(ttsf_core.__file__).parent).with_suffix("").parts)
        for path in Path(ttsf_core.__file__).parent.rglob("*.py")
        if path.name != "__init__.py"
    )
    code = "import sys\n" + "".join(f"import {name}\n" for name in modules) + \
        "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(modules) > 10 and result.stdout.strip().splitlines()[-1] == "[]"
