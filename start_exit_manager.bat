@echo off
rem Start the exit manager alone (protects positions, no new entries) in .venv-daytrader (created, with requirements.txt, on first start).
rem Arguments are passed through, e.g.  start_exit_manager.bat --once
setlocal
cd /d "%~dp0"
set VENV=.venv-daytrader
rem --help answers at once: never build the environment (hundreds of MB) just to print usage.
for %%A in (%*) do (
    if /i "%%~A"=="--help" goto help
    if /i "%%~A"=="-h" goto help
)
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

:help
rem Installed: exit_manager.py's own list of options.
if not exist "%VENV%\Scripts\python.exe" goto usage
"%VENV%\Scripts\python.exe" exit_manager.py %*
exit /b %ERRORLEVEL%

:usage
echo usage: start_exit_manager.bat [exit_manager.py options]
echo.
echo Runs exit_manager.py alone (protects open positions, no new entries) in .venv-daytrader.
echo The first start creates .venv-daytrader and installs requirements.txt into it (several
echo hundred MB). Once installed, start_exit_manager.bat --help lists every exit_manager.py
echo option.
echo.
echo   start_exit_manager.bat           protect positions with the settings in .env
echo   start_exit_manager.bat --once    one reconciliation pass, then exit
exit /b 0
