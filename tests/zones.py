"""The test DNS zone and which loopback address plays which MX host."""

# Which 127.0.0.x address plays which MX host.
MX = {
    "good1": "127.0.0.2",
    "good2": "127.0.0.3",
    "fallback_closed": "127.0.0.4",  # nothing listens: connection refused
    "fallback_554": "127.0.0.5",  # answers 554 at greeting
    "fallback_ok": "127.0.0.6",
    "implicit": "127.0.0.7",
    "tempfail": "127.0.0.8",
    "reject": "127.0.0.9",
    "sender": "127.0.0.10",
    "slow": "127.0.0.11",
    "down": "127.0.0.12",
    "slowconn": "127.0.0.13",  # answers DATA slowly: for connection-limit tests
    "throttled": "127.0.0.14",  # answers like Gmail rate-limiting: for automation tests
    # MTA-STS: the policy host (HTTPS) and MX hosts of domains with policies.
    "sts_policy": "127.0.0.16",
    "sts": "127.0.0.15",  # certificate valid for mx.sts.test (test CA)
    "sts_bad": "127.0.0.17",  # self-signed certificate
    "sts_testing": "127.0.0.18",  # self-signed, but the policy is in testing mode
    "sts_mismatch": "127.0.0.19",  # not named by its domain's policy
}

ZONE = [
    "good MX 10 mx1.good",
    "good MX 20 mx2.good",
    "rollup MX 20 mx2.good",  # the same MX set as good.test, listed the other way round
    "rollup MX 10 MX1.good",
    f"mx1.good A {MX['good1']}",
    f"mx2.good A {MX['good2']}",
    "fallback MX 10 mx1.fallback",
    "fallback MX 20 mx2.fallback",
    "fallback MX 30 mx3.fallback",
    f"mx1.fallback A {MX['fallback_closed']}",
    f"mx2.fallback A {MX['fallback_554']}",
    f"mx3.fallback A {MX['fallback_ok']}",
    f"implicit A {MX['implicit']}",
    "nullmx MX 0 .",
    "tempfail MX 10 mx.tempfail",
    f"mx.tempfail A {MX['tempfail']}",
    f"reject A {MX['reject']}",
    "sender MX 10 mx.sender",
    f"mx.sender A {MX['sender']}",
    f"slow A {MX['slow']}",
    f"down A {MX['down']}",
    f"slowconn A {MX['slowconn']}",
    f"throttled A {MX['throttled']}",
    *(
        line
        for name in ("sts", "stsbad", "ststesting", "stsmismatch")
        for line in (
            f"{name} MX 10 mx.{name}",
            f'_mta-sts.{name} TXT "v=STSv1; id=20261124"',
            f"mta-sts.{name} A {MX['sts_policy']}",
        )
    ),
    f"mx.sts A {MX['sts']}",
    f"mx.stsbad A {MX['sts_bad']}",
    f"mx.ststesting A {MX['sts_testing']}",
    f"mx.stsmismatch A {MX['sts_mismatch']}",
]
