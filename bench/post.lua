-- wrk request for keyward's benchmarks: POST /v1/responses with a JSON body.
-- BENCH_EVENTS: SSE events the fake upstream streams back (0: a JSON answer).
-- BENCH_BODY_BYTES: size of filler in the request body (for the body-size scenario).
local events = os.getenv("BENCH_EVENTS") or "0"
local size = tonumber(os.getenv("BENCH_BODY_BYTES") or "0")
local stream = "false"
if events ~= "0" then stream = "true" end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "text/event-stream"
wrk.headers["x-bench-events"] = events
wrk.body = '{"model":"gpt-5","stream":' .. stream .. ',"input":"' .. string.rep("x", size) .. '"}'
