-- One machine-readable line per run; any non-2xx answer or socket error is counted, since a
-- fast refusal would flatter the figures.
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "RESULT rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f requests=%d bad=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    summary.requests,
    errors.status + errors.connect + errors.read + errors.write + errors.timeout))
end
