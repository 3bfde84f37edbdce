"""Shared test helpers, in one place (a test module imports them from here, never from another
test module): stand-in servers for fault injection (canned, fake, hostile, threaded), a fake NVML
(fake_nvml), the Docker test image and its engine table (docker_image), the real llama-server's
--help (llama_help), shipped scenarios' dry-run command lines (dry_runs), a known speedup curve
for the depth search (depth_curve), and run folders, scenarios and request rows (runs)."""
