"""One torchrun worker for test_distributed.py: runs scripts' main() in turn, in one process group.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_ddp_child.py PLAN DUMP

PLAN is a JSON file of [name, script, argv] or [name, script, argv, [rank, step(, signal)]] entries
(the last: that rank alone gets a Ctrl-C (SIGINT), or the signal named, during that step). After each run,
DUMP/<name>-rank<r>.pt holds this process's networks (state_dicts), method state and step, so the
test can compare the processes; a UserError or Interrupted is dumped as {"error": message}.
DUMP lies outside the run folders.
(Not a test module: pytest collects test_*.py only.)
"""
import importlib
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import common  # noqa: E402


def main() -> None:
    plan, dump = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    torch.set_num_threads(1)
    finished = {}
    original = common.Run.finish

    def finish(self):  # remember the run, to dump what this process holds at the end
        finished["run"] = self
        return original(self)

    log, interrupt = common.Run.log, {}

    def log_and_interrupt(self, **metrics):
        who, signum = interrupt.pop(self.step, (None, None))
        if who == common.rank():
            os.kill(os.getpid(), signum)  # the handler Run.loop installed sets its flag
        return log(self, **metrics)

    common.Run.finish, common.Run.log = finish, log_and_interrupt
    try:
        for name, script, argv, *ctrl_c in plan:
            finished.clear()
            interrupt.clear()
            if ctrl_c:
                rank, step, *signame = ctrl_c[0]
                interrupt[step] = (rank, getattr(signal, signame[0] if signame else "SIGINT"))
            try:
                importlib.import_module(script).main(argv)
            except (common.UserError, common.Interrupted) as e:
                torch.save({"error": str(e)}, dump / f"{name}-rank{common._env_rank()}.pt")
                continue
            run = finished["run"]
            nets = {k: m.state_dict() for k, m in run.modules.items() if isinstance(m, torch.nn.Module)}
            torch.save({"modules": nets, "state": run.state, "step": run.step, "dir": str(run.dir)},
                       dump / f"{name}-rank{common.rank()}.pt")
    finally:
        common.shutdown()


if __name__ == "__main__":
    main()
