-- reap: ARGV[4..] ids a read found missing or expired: reap them from the index and count them.
for i = 4, #ARGV do live(ARGV[i]) end
return {reaped, evicted}
