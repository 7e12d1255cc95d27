"""Self-contained HTML pages built from the SQL store, with plotly charts that work offline.

- `page.py`: the page itself (`render_page(title, sections)`), reusable by any command that writes one;
- `charts.py`: the report's data shaping (pure) and its plotly figures;
- `build.py`: `finpulse report`: reads the store (worker/store/reports.py) and assembles the sections.
"""
