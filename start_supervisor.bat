@echo off
rem Start the supervisor (exit manager first, then the day trader) in .venv-daytrader.
rem Creates the virtual environment the first time and installs requirements.txt whenever it
rem changed since the last successful install (after a git pull, a failed first install).
rem Arguments are passed through, e.g.  start_supervisor.bat --allocation 0.2
setlocal
cd /d "%~dp0"
set VENV=.venv-daytrader
set STAMP=%VENV%\requirements.installed
rem --help answers at once: never build the environment (hundreds of MB) just to print usage.
for %%A in (%*) do (
    if /i "%%~A"=="--help" goto help
    if /i "%%~A"=="-h" goto help
)
if not exist "%VENV%\Scripts\python.exe" (
    echo creating %VENV% ^(first start only^)
    py -3.11 -m venv "%VENV%" 2>nul || python -m venv "%VENV%"
    if errorlevel 1 (
        echo error: could not create %VENV%: install Python 3.11 from python.org
        goto failed
    )
)
fc /b requirements.txt "%STAMP%" >nul 2>&1
if errorlevel 1 (
    echo installing requirements.txt into %VENV%
    "%VENV%\Scripts\python.exe" -m pip install --disable-pip-version-check -r requirements.txt
    if errorlevel 1 (
        echo error: installing requirements.txt failed; see the messages above, then start again
        goto failed
    )
    copy /y requirements.txt "%STAMP%" >nul
)
"%VENV%\Scripts\python.exe" supervisor.py %*
if errorlevel 1 goto failed
exit /b 0

:help
rem Installed: supervisor.py's own list of options.
if not exist "%VENV%\Scripts\python.exe" goto usage
fc /b requirements.txt "%STAMP%" >nul 2>&1
if errorlevel 1 goto usage
"%VENV%\Scripts\python.exe" supervisor.py %*
exit /b %ERRORLEVEL%

:usage
echo usage: start_supervisor.bat [supervisor.py options]
echo.
echo Runs supervisor.py (the exit manager first, then the day trader) in .venv-daytrader.
echo The first start creates .venv-daytrader and installs requirements.txt into it (several
echo hundred MB); later starts reinstall only when requirements.txt changed. Once installed,
echo start_supervisor.bat --help lists every supervisor.py option.
echo.
echo   start_supervisor.bat --sim       one whole simulated trading day (no IB account needed)
echo   start_supervisor.bat --status    one status block from the database
echo   start_supervisor.bat             paper trading with the settings in .env
exit /b 0

:failed
set CODE=%ERRORLEVEL%
if "%CODE%"=="0" set CODE=1
rem Started by a double click: keep the window open so the error can be read.
echo %CMDCMDLINE% | find /i "/c" >nul && pause
exit /b %CODE%
