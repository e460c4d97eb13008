"""Measurements of a real herd on this machine; each `python -m bench.<script>` writes
`bench/results/<script>-<date>.json` and a PNG (README, Performance).

Scripts: gateway, herd, propagation, whatsat, startup, catchup (and baseline_server,
the ceiling the gateway bench compares with; geonames_bench, the places index alone).
What they share, by job:

- script.py          the command line, repeats, writing and printing the results
- report.py          results file with the machine's facts, console tables, plots
- stats.py           median and spread over repeats, percentiles, histograms
- load.py            client load shapes (RequestResponse, Pipelined, Paced, Probes),
                     payloads (Iamats, Geoadds, Whatsats), and the ClientPool running them
- client_process.py  inside a client process: the connections that carry a load
- lines.py           the lines clients send (scrambled client ids) and reply counting
- herds.py           herds in scratch folders (zherd.harness), convergence, lost updates
- usage.py           cpu pinning, cpu time and memory of our processes, py-spy profiles
"""
