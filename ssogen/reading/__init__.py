"""What reads a finished build: `inspect` (summary tables, the HTML report) and `audit` (a judge's verdict on
every pair, `judging`).

May import: every package before it (an audit starts a judge engine and can publish the audited folder).
"""
