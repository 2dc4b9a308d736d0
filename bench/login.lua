-- Closed-loop logins: each connection sends its next login when the last one is answered.
-- `wrk -s login.lua URL -- EMAIL PASSWORD`
local body

function init(args)
  body = string.format('{"email":"%s","password":"%s"}', args[1], args[2])
end

function request()
  return wrk.format("POST", "/v1/login", { ["Content-Type"] = "application/json" }, body)
end

dofile(os.getenv("BENCH_DIR") .. "/report.lua")
