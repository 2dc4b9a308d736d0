-- Cycles through a pool of credentials, one per request, in the header given as the second
-- argument: `wrk -s pool.lua URL -- FILE Authorization "Bearer "` (or `Cookie "name="`).
local pool = {}
local next_index = 0
local header_name, prefix

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then pool[#pool + 1] = line end
  end
  header_name = args[2] or "Authorization"
  prefix = args[3] or "Bearer "
  if #pool == 0 then error("empty credential pool " .. args[1]) end
end

function request()
  next_index = next_index % #pool + 1
  return wrk.format("GET", nil, { [header_name] = prefix .. pool[next_index] })
end

dofile(os.getenv("BENCH_DIR") .. "/report.lua")
