-- wrk script: POST /v1/images/generations with an OpenAI-style JSON body.
--   BENCH_KEY    Bearer key (empty: no Authorization header, as for the fake upstream itself)
--   BENCH_MODEL  model id (default hidream-i1-full)
--   BENCH_BODY   the whole JSON body, replacing the default one (optional)
-- On done() it prints one machine-readable line (latencies in ms):
--   RESULT requests=N duration_s=S rps=R p50_ms=.. p90_ms=.. p99_ms=.. max_ms=.. mean_ms=.. non2xx=N errors=N timeouts=N
-- Statuses other than 2xx are counted per thread and the first few are echoed to stderr.
local key = os.getenv("BENCH_KEY") or ""
local model = os.getenv("BENCH_MODEL") or "hidream-i1-full"
local body = os.getenv("BENCH_BODY") or ""
if body == "" then
  body = '{"model":"' .. model .. '","prompt":"a red fox in the snow, studio light","n":1,"size":"1024x1024"}'
end
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

non2xx = 0
function response(status, headers, resp_body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if non2xx <= 3 then
      io.stderr:write("non-2xx status " .. status .. ": " .. string.sub(resp_body or "", 1, 300) .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
  end
  local e = summary.errors
  local dur = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f mean_ms=%.3f"
      .. " non2xx=%d errors=%d timeouts=%d\n",
    summary.requests, dur, summary.requests / dur,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, latency.mean / 1000,
    bad, e.connect + e.read + e.write + e.timeout, e.timeout))
end
