"""The project's tooling. The modules at this level are shared (paths, endpoints, model_config,
worker_plan); each folder imports them and, so that no two folders import each other, only:
server/ -> client/ and packaging/; client/, packaging/ and harness/ -> nothing else."""
