#!/usr/bin/env python3
"""Writes the example's spreadsheets into ../data (needs openpyxl from PyPI:
`pip install openpyxl`). The files are committed; run this only to change them."""
import datetime
from pathlib import Path

import openpyxl

DATA = Path(__file__).resolve().parent.parent / "data"

companies = openpyxl.Workbook()
for market, rows in {
    "KOSPI": [("005930", "Samsung Electronics", "IT", datetime.date(1975, 6, 11)),
              ("000660", "SK hynix", "IT", datetime.date(1996, 12, 26)),
              ("035420", "NAVER", "COMM", datetime.date(2008, 11, 28)),
              ("005380", "Hyundai Motor", "AUTO", datetime.date(1974, 6, 28))],
    "KOSDAQ": [("247540", "EcoPro BM", "CHEM", datetime.date(2019, 3, 5)),
               ("091990", "Celltrion Healthcare", "HEALTH", datetime.date(2017, 7, 28)),
               ("293490", "Kakao Games", "COMM", datetime.date(2020, 9, 10))],
}.items():
    sheet = companies.create_sheet(market)
    sheet.append(["Code", "Company", "Sector", "Listed"])
    for code, name, sector, listed in rows:
        sheet.append([code, name, sector, listed])
        sheet.cell(row=sheet.max_row, column=4).number_format = "yyyy-mm-dd"
del companies["Sheet"]
companies.save(DATA / "companies.xlsx")

prices = openpyxl.Workbook()
sheet = prices.active
sheet.title = "Daily"
sheet["A1"] = "Closing prices, KRW (exported from the trading desk's sheet)"
sheet.append(["Code", "Day", "Close", "Volume"])
for code, base in [("005930", 71000), ("000660", 150000), ("035420", 185000), ("247540", 240000)]:
    for day in range(1, 6):
        sheet.append([code, datetime.date(2024, 3, day), base + day * 150.5, 1000 * day])
        sheet.cell(row=sheet.max_row, column=2).number_format = "yyyy-mm-dd"
prices.save(DATA / "prices.xlsx")
