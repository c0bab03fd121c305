"""The project's tooling. The modules at this level are shared (paths, endpoints, model_config,
serve_config, archive_contents, worker_plan); each folder imports them and, so that no two folders
import each other, only:
server/ -> client/, packaging/ and ray_serve/; ray_serve/ -> client/ and harness/ (its replicas run
the handler as harness/in_process.py does); client/, packaging/ and harness/ -> nothing else.

The handler's modules are put on the path here, and imported flat (`from model_identity import
NAME`), as TorchServe puts an archive's folder on a worker's path: one name for each module, so
it loads once and is type-checked once, whoever imports it."""

import sys
from pathlib import Path

HANDLER_DIR = Path(__file__).resolve().parent.parent / "handler"
if str(HANDLER_DIR) not in sys.path:
    sys.path.insert(0, str(HANDLER_DIR))
