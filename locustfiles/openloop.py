"""Open-loop chat: requests arrive at a rate, whatever the replies do (no coordinated omission).

    locust -f locustfiles/openloop.py --host http://127.0.0.1:8000/v1 -u 1 -r 1 -t 1m --headless \
        --llm-rate 20 --llm-arrival poisson --llm-max-in-flight 100

--llm-rate is for the whole swarm and is split among its users: run one user per process
(-u 2 with --processes 2). Latencies count from each request's scheduled time; the schedule lag
is a metric of its own (LLM tab, charts, llm_metrics.json). --llm-trace FILE replays a Mooncake
trace instead. Every --llm-... option of chat.py applies.
"""

from llmsim.locust import OpenLoopUser


class SteadyChat(OpenLoopUser):
    """Poisson arrivals at 5 requests/s unless --llm-rate says otherwise."""

    rate = 5.0
