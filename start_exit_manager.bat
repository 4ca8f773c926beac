@echo off
rem Start the exit manager alone (protects positions, no new entries) in .venv-daytrader (created, with requirements.txt, on first start).
rem Arguments are passed through, e.g.  start_exit_manager.bat --once
setlocal
cd /d "%~dp0"
set VENV=.venv-daytrader
if not exist "%VENV%\Scripts\python.exe" (
    echo creating %VENV% and installing requirements.txt ^(first start only^)
    py -3.11 -m venv "%VENV%" 2>nul || python -m venv "%VENV%"
    if errorlevel 1 (
        echo error: could not create %VENV%: install Python 3.11 from python.org
        exit /b 1
    )
    "%VENV%\Scripts\python.exe" -m pip install --disable-pip-version-check -r requirements.txt
    if errorlevel 1 (
        echo error: installing requirements.txt failed; see the messages above
        exit /b 1
    )
)
"%VENV%\Scripts\python.exe" exit_manager.py %*
exit /b %ERRORLEVEL%
