"""What tests build in code: tiny bundles, the CLI run in-process, tiny training configs."""
