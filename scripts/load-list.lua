-- wrk: GET /videos/{id}/placements over the 20 sample videos, picked at
-- random: a list of 10 placements, its members read in one batch.
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/videos/" .. math.random(1, 20) .. "/placements")
end
