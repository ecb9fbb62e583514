-- wrk: GET /placements/{id} over 100 hot ids, picked at random.
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/placements/" .. math.random(1, 100))
end
