"""bench-exec's peer: a chain of N tasks under dagron 0.1.1's CachedDAGExecutor (Python
closures, a FileSystemCacheBackend in CACHE_DIR). Usage: PYTHON bench_dagron_chain.py N CACHE_DIR.
Prints hits=H misses=M."""
import sys
from dagron import DAGBuilder, CachedDAGExecutor, ContentAddressableCache
from dagron.execution.content_cache import FileSystemCacheBackend

n, cache_dir = int(sys.argv[1]), sys.argv[2]
b = DAGBuilder()
for i in range(n):
    b.add_node(f"t{i}")
for i in range(1, n):
    b.add_edge(f"t{i-1}", f"t{i}")
dag = b.build()
tasks = {f"t{i}": (lambda i=i: i) for i in range(n)}
r = CachedDAGExecutor(dag, ContentAddressableCache(FileSystemCacheBackend(cache_dir))).execute(tasks)
print(f"hits={r.cache_hits} misses={r.cache_misses}")
